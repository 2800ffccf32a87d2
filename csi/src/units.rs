//! Newtypes for the quantities the driver juggles: thin device ids (24-bit, as the kernel's
//! dm-thin metadata allows) and byte sizes that must be whole 512-byte sectors.

use std::fmt;

use serde::{Deserialize, Serialize};

pub const SECTOR: u64 = 512;

/// The largest thin device id dm-thin accepts (ids are 24-bit).
pub const MAX_THIN_ID: u32 = (1 << 24) - 1;

/// A thin device id inside the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct ThinId(u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("thin device id {0} is out of range: dm-thin ids are 0..={MAX_THIN_ID}")]
pub struct ThinIdRange(pub u32);

impl ThinId {
    pub fn new(id: u32) -> Result<Self, ThinIdRange> {
        if id > MAX_THIN_ID {
            return Err(ThinIdRange(id));
        }
        Ok(ThinId(id))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for ThinId {
    type Error = ThinIdRange;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        ThinId::new(v)
    }
}

impl From<ThinId> for u32 {
    fn from(v: ThinId) -> u32 {
        v.0
    }
}

impl fmt::Display for ThinId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Formats a byte count for people: `1.5 GiB`, `512 MiB`, `0 B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A size exactly, in the largest binary unit that divides it (`1280Mi`, `2Gi`, `4097`): what a
/// person can paste back into a size flag. For LVM sizes, always whole extents.
pub fn exact_bytes(bytes: u64) -> String {
    for (shift, unit) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeParseError {
    #[error("size {0:?} is not a number with an optional unit (K, M, G, T, Ki, Mi, Gi, Ti)")]
    Syntax(String),
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses `1073741824`, `512Mi`, `1G`, `2GiB`, `10T` (binary and decimal units).
pub fn parse_size(text: &str) -> Result<u64, SizeParseError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(SizeParseError::Syntax(text.to_owned()));
    }
    let n: u64 = digits.parse().map_err(|_| SizeParseError::Overflow(text.to_owned()))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KB" => 1000,
        "M" | "MB" => 1000u64.pow(2),
        "G" | "GB" => 1000u64.pow(3),
        "T" | "TB" => 1000u64.pow(4),
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        _ => return Err(SizeParseError::Syntax(text.to_owned())),
    };
    n.checked_mul(mult).ok_or_else(|| SizeParseError::Overflow(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thin_ids_are_24_bit() {
        assert!(ThinId::new(0).is_ok());
        assert!(ThinId::new(MAX_THIN_ID).is_ok());
        assert_eq!(ThinId::new(MAX_THIN_ID + 1), Err(ThinIdRange(MAX_THIN_ID + 1)));
        assert!(serde_json::from_str::<ThinId>("16777216").is_err());
        assert_eq!(serde_json::from_str::<ThinId>("7").unwrap().get(), 7);
    }

    #[test]
    fn exact_sizes_parse_back() {
        for (b, text) in
            [(0, "0"), (4097, "4097"), (1280 << 20, "1280Mi"), (2 << 30, "2Gi"), (3 << 40, "3Ti"), (1 << 10, "1Ki")]
        {
            assert_eq!(exact_bytes(b), text);
            assert_eq!(parse_size(text), Ok(b));
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert!(matches!(parse_size("12Q"), Err(SizeParseError::Syntax(_))));
        assert!(matches!(parse_size("Gi"), Err(SizeParseError::Syntax(_))));
        assert!(matches!(parse_size("99999999999Ti"), Err(SizeParseError::Overflow(_))));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
