//! Deterministic dm names and uuids for thin devices, derived from the pool and the thin id, so
//! that state left in the kernel can always be found again. The uuid carries the project prefix
//! `TPCSI-`; a sweep finds our devices by it.

use crate::units::ThinId;

pub const UUID_PREFIX: &str = "TPCSI-";

/// A short, dm-safe tag for a pool, taken from its dm name.
pub fn pool_tag(pool_dm_name: &str) -> String {
    pool_dm_name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).take(48).collect()
}

pub fn thin_name(tag: &str, id: ThinId) -> String {
    format!("tpcsi-{tag}-{id}")
}

pub fn thin_uuid(tag: &str, id: ThinId) -> String {
    format!("{UUID_PREFIX}{tag}-{id}")
}

/// The thin id in one of our uuids for this pool, or `None` for anyone else's device.
pub fn parse_thin_uuid(tag: &str, uuid: &str) -> Option<ThinId> {
    let rest = uuid.strip_prefix(UUID_PREFIX)?.strip_prefix(tag)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ThinId::new(rest.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_fit_dm_limits() {
        let tag = pool_tag("vg--x-thinpool-tpool");
        assert_eq!(tag, "vg__x_thinpool_tpool");
        let id = ThinId::new(16_777_215).unwrap();
        assert_eq!(parse_thin_uuid(&tag, &thin_uuid(&tag, id)), Some(id));
        let long = pool_tag(&"p".repeat(200));
        assert!(thin_name(&long, id).len() < 128);
        assert!(thin_uuid(&long, id).len() < 129);
    }

    #[test]
    fn foreign_uuids_are_not_ours() {
        let tag = pool_tag("pool");
        assert_eq!(parse_thin_uuid(&tag, "LVM-abc"), None);
        assert_eq!(parse_thin_uuid(&tag, "TPCSI-other-3"), None);
        assert_eq!(parse_thin_uuid(&tag, "TPCSI-pool-"), None);
        assert_eq!(parse_thin_uuid(&tag, "TPCSI-pool-3x"), None);
        assert_eq!(parse_thin_uuid(&tag, "TPCSI-pool-99999999"), None);
        assert_eq!(parse_thin_uuid(&tag, "TPCSI-pool-3"), ThinId::new(3).ok());
    }
}
