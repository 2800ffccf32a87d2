//! The thin-pool target's status and table lines, parsed and printed by pure code.
//!
//! Status (kernel `Documentation/admin-guide/device-mapper/thin-provisioning.rst`):
//! `<tid> <used>/<total meta blocks> <used>/<total data blocks> <held root|-> rw|ro|out_of_data_space
//! discard_passdown|no_discard_passdown|ignore_discard error_if_no_space|queue_if_no_space
//! needs_check|- [<metadata low water mark>]`, or `Fail` (also `Error` from older kernels).
//! Later kernels may append fields; unknown trailing fields are ignored. The `devicemapper`
//! crate's own parser rejects `ignore_discard`, which is why this one exists.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Size of a metadata block in bytes (fixed by dm-thin).
pub const META_BLOCK_BYTES: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    Rw,
    Ro,
    OutOfDataSpace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Discard {
    Passdown,
    NoPassdown,
    Ignore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoSpacePolicy {
    Error,
    Queue,
}

/// A working pool's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkingStatus {
    pub transaction_id: u64,
    pub meta_used: u64,
    pub meta_total: u64,
    pub data_used: u64,
    pub data_total: u64,
    pub held_root: Option<u64>,
    pub mode: PoolMode,
    pub discard: Discard,
    pub no_space: NoSpacePolicy,
    pub needs_check: bool,
    pub meta_low_water: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PoolStatus {
    Working(WorkingStatus),
    Fail,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot parse thin-pool status {line:?}: {reason}")]
pub struct StatusParseError {
    pub line: String,
    pub reason: String,
}

fn err(line: &str, reason: impl Into<String>) -> StatusParseError {
    StatusParseError { line: line.to_owned(), reason: reason.into() }
}

fn ratio(line: &str, field: &str, what: &str) -> Result<(u64, u64), StatusParseError> {
    let (used, total) =
        field.split_once('/').ok_or_else(|| err(line, format!("{what} field {field:?} is not <used>/<total>")))?;
    let n = |s: &str| s.parse::<u64>().map_err(|_| err(line, format!("{what} field {field:?} is not numeric")));
    Ok((n(used)?, n(total)?))
}

impl FromStr for PoolStatus {
    type Err = StatusParseError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        match f.as_slice() {
            ["Fail", ..] | ["Error", ..] => return Ok(PoolStatus::Fail),
            _ if f.len() < 8 => return Err(err(line, format!("expected at least 8 fields, found {}", f.len()))),
            _ => {}
        }
        let transaction_id = f[0].parse().map_err(|_| err(line, "transaction id is not numeric"))?;
        let (meta_used, meta_total) = ratio(line, f[1], "metadata")?;
        let (data_used, data_total) = ratio(line, f[2], "data")?;
        let held_root = match f[3] {
            "-" => None,
            s => Some(s.parse().map_err(|_| err(line, "held metadata root is not numeric"))?),
        };
        let mode = match f[4] {
            "rw" => PoolMode::Rw,
            "ro" => PoolMode::Ro,
            "out_of_data_space" => PoolMode::OutOfDataSpace,
            s => return Err(err(line, format!("unknown pool mode {s:?}"))),
        };
        let discard = match f[5] {
            "discard_passdown" => Discard::Passdown,
            "no_discard_passdown" => Discard::NoPassdown,
            "ignore_discard" => Discard::Ignore,
            s => return Err(err(line, format!("unknown discard mode {s:?}"))),
        };
        let no_space = match f[6] {
            "error_if_no_space" => NoSpacePolicy::Error,
            "queue_if_no_space" => NoSpacePolicy::Queue,
            s => return Err(err(line, format!("unknown no-space policy {s:?}"))),
        };
        let needs_check = match f[7] {
            "needs_check" => true,
            "-" => false,
            s => return Err(err(line, format!("unknown needs_check field {s:?}"))),
        };
        let meta_low_water = match f.get(8) {
            None => None,
            Some(s) => Some(s.parse().map_err(|_| err(line, "metadata low water mark is not numeric"))?),
        };
        if meta_used > meta_total || data_used > data_total {
            return Err(err(line, "used blocks exceed total blocks"));
        }
        Ok(PoolStatus::Working(WorkingStatus {
            transaction_id,
            meta_used,
            meta_total,
            data_used,
            data_total,
            held_root,
            mode,
            discard,
            no_space,
            needs_check,
            meta_low_water,
        }))
    }
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            PoolStatus::Fail => return f.write_str("Fail"),
            PoolStatus::Working(s) => s,
        };
        write!(f, "{} {}/{} {}/{} ", s.transaction_id, s.meta_used, s.meta_total, s.data_used, s.data_total)?;
        match s.held_root {
            Some(r) => write!(f, "{r} ")?,
            None => f.write_str("- ")?,
        }
        f.write_str(match s.mode {
            PoolMode::Rw => "rw ",
            PoolMode::Ro => "ro ",
            PoolMode::OutOfDataSpace => "out_of_data_space ",
        })?;
        f.write_str(match s.discard {
            Discard::Passdown => "discard_passdown ",
            Discard::NoPassdown => "no_discard_passdown ",
            Discard::Ignore => "ignore_discard ",
        })?;
        f.write_str(match s.no_space {
            NoSpacePolicy::Error => "error_if_no_space ",
            NoSpacePolicy::Queue => "queue_if_no_space ",
        })?;
        f.write_str(if s.needs_check { "needs_check" } else { "-" })?;
        if let Some(w) = s.meta_low_water {
            write!(f, " {w}")?;
        }
        Ok(())
    }
}

/// A thin-pool table line: `<meta dev> <data dev> <block sectors> <low water> [<n> <feature>...]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolTable {
    pub meta_dev: String,
    pub data_dev: String,
    pub block_sectors: u64,
    pub low_water_blocks: u64,
    pub features: Vec<String>,
}

impl PoolTable {
    /// Whether newly provisioned blocks are zeroed (no `skip_block_zeroing`).
    pub fn zeroes_new_blocks(&self) -> bool {
        !self.features.iter().any(|f| f == "skip_block_zeroing")
    }
}

impl FromStr for PoolTable {
    type Err = StatusParseError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.len() < 4 {
            return Err(err(line, "a thin-pool table has at least 4 fields"));
        }
        let block_sectors = f[2].parse().map_err(|_| err(line, "block size is not numeric"))?;
        let low_water_blocks = f[3].parse().map_err(|_| err(line, "low water mark is not numeric"))?;
        let features = match f.get(4) {
            None => vec![],
            Some(n) => {
                let n: usize = n.parse().map_err(|_| err(line, "feature count is not numeric"))?;
                // `f` has at least 5 fields here; `5 + n` could overflow on a huge count.
                if f.len() - 5 != n {
                    return Err(err(line, format!("feature count {n} does not match the fields that follow")));
                }
                f[5..].iter().map(|s| s.to_string()).collect()
            }
        };
        Ok(PoolTable {
            meta_dev: f[0].to_owned(),
            data_dev: f[1].to_owned(),
            block_sectors,
            low_water_blocks,
            features,
        })
    }
}

impl fmt::Display for PoolTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {} {}", self.meta_dev, self.data_dev, self.block_sectors, self.low_water_blocks)?;
        if !self.features.is_empty() {
            write!(f, " {} {}", self.features.len(), self.features.join(" "))?;
        }
        Ok(())
    }
}

/// A thin target's status: `<nr mapped sectors> <highest mapped sector>`, `-` or `Fail`.
pub fn parse_thin_mapped_sectors(line: &str) -> Option<u64> {
    line.split_ascii_whitespace().next().and_then(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_what_the_kernel_prints() {
        let lvm = "0 521/5120 0/3672 - rw discard_passdown queue_if_no_space - 1024";
        let PoolStatus::Working(s) = lvm.parse().unwrap() else { panic!() };
        assert_eq!((s.meta_used, s.meta_total, s.data_used, s.data_total), (521, 5120, 0, 3672));
        assert_eq!(s.mode, PoolMode::Rw);
        assert_eq!(s.meta_low_water, Some(1024));
        assert!(!s.needs_check);
        assert_eq!(lvm.parse::<PoolStatus>().unwrap().to_string(), lvm);

        let forms = [
            "7 10/100 20/200 - ro ignore_discard error_if_no_space needs_check 12",
            "7 10/100 200/200 55 out_of_data_space no_discard_passdown queue_if_no_space - 12",
            "7 10/100 20/200 - rw discard_passdown queue_if_no_space -",
            "7 10/100 20/200 - rw discard_passdown queue_if_no_space - 12 some_future_field",
        ];
        for line in forms {
            assert!(matches!(line.parse::<PoolStatus>(), Ok(PoolStatus::Working(_))), "{line}");
        }
        let PoolStatus::Working(s) = forms[0].parse().unwrap() else { panic!() };
        assert_eq!((s.mode, s.discard, s.needs_check), (PoolMode::Ro, Discard::Ignore, true));
        let PoolStatus::Working(s) = forms[1].parse().unwrap() else { panic!() };
        assert_eq!((s.mode, s.held_root), (PoolMode::OutOfDataSpace, Some(55)));
        assert_eq!("Fail".parse::<PoolStatus>(), Ok(PoolStatus::Fail));
        assert_eq!("Error".parse::<PoolStatus>(), Ok(PoolStatus::Fail));
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "",
            "0 1/2 3/4",
            "x 1/2 3/4 - rw discard_passdown queue_if_no_space -",
            "0 12 3/4 - rw discard_passdown queue_if_no_space -",
            "0 1/2 3/4 - rx discard_passdown queue_if_no_space -",
            "0 1/2 3/4 - rw discard queue_if_no_space -",
            "0 1/2 3/4 - rw discard_passdown queue -",
            "0 1/2 3/4 - rw discard_passdown queue_if_no_space maybe",
            "0 3/2 3/4 - rw discard_passdown queue_if_no_space -",
            "0 1/2 3/4 q rw discard_passdown queue_if_no_space -",
        ] {
            assert!(bad.parse::<PoolStatus>().is_err(), "{bad:?}");
        }
    }

    /// Found by the parsers fuzz target: a feature count near usize::MAX overflowed `5 + n`.
    #[test]
    fn a_huge_feature_count_is_refused() {
        let line = format!("253:1 253:2 128 32768 {} a b", usize::MAX);
        assert!(line.parse::<PoolTable>().is_err());
        assert!(format!("253:1 253:2 128 32768 {}", usize::MAX - 4).parse::<PoolTable>().is_err());
    }

    #[test]
    fn pool_tables() {
        let t: PoolTable = "7:1 7:0 128 32768 1 skip_block_zeroing".parse().unwrap();
        assert!(!t.zeroes_new_blocks());
        assert_eq!(t.to_string(), "7:1 7:0 128 32768 1 skip_block_zeroing");
        let t: PoolTable = "253:1 253:2 1024 0".parse().unwrap();
        assert!(t.zeroes_new_blocks());
        assert_eq!(t.block_sectors, 1024);
        assert!("253:1 253:2 1024 0 2 skip_block_zeroing".parse::<PoolTable>().is_err());
        assert!("253:1 253:2".parse::<PoolTable>().is_err());
    }

    #[test]
    fn thin_status() {
        assert_eq!(parse_thin_mapped_sectors("2048 4095"), Some(2048));
        assert_eq!(parse_thin_mapped_sectors("0 -"), Some(0));
        assert_eq!(parse_thin_mapped_sectors("Fail"), None);
    }

    fn working() -> impl Strategy<Value = WorkingStatus> {
        (
            any::<u64>(),
            (0u64..1 << 40, 0u64..1 << 40),
            (0u64..1 << 40, 0u64..1 << 40),
            proptest::option::of(any::<u64>()),
            prop_oneof![Just(PoolMode::Rw), Just(PoolMode::Ro), Just(PoolMode::OutOfDataSpace)],
            prop_oneof![Just(Discard::Passdown), Just(Discard::NoPassdown), Just(Discard::Ignore)],
            prop_oneof![Just(NoSpacePolicy::Error), Just(NoSpacePolicy::Queue)],
            any::<bool>(),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(tid, (m1, m2), (d1, d2), held, mode, discard, no_space, nc, lw)| WorkingStatus {
                transaction_id: tid,
                meta_used: m1.min(m2),
                meta_total: m1.max(m2),
                data_used: d1.min(d2),
                data_total: d1.max(d2),
                held_root: held,
                mode,
                discard,
                no_space,
                needs_check: nc,
                meta_low_water: lw,
            })
    }

    proptest! {
        #[test]
        fn every_generated_status_line_round_trips(s in working()) {
            let line = PoolStatus::Working(s.clone()).to_string();
            prop_assert_eq!(line.parse::<PoolStatus>(), Ok(PoolStatus::Working(s)));
        }

        #[test]
        fn extra_whitespace_is_accepted(s in working(), sep in "[ \t]{1,3}") {
            let line = PoolStatus::Working(s.clone()).to_string().replace(' ', &sep);
            prop_assert_eq!(line.parse::<PoolStatus>(), Ok(PoolStatus::Working(s)));
        }

        #[test]
        fn arbitrary_text_never_panics(line in "\\PC{0,120}") {
            let _ = line.parse::<PoolStatus>();
            let _ = line.parse::<PoolTable>();
        }
    }
}
