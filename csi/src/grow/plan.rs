//! When and by how much an LVM-backed pool grows (pure): LVM's own autoextend rule — once data
//! (or metadata) fill reaches the threshold, that part grows by a percentage of its size — with a
//! ceiling for data, LVM's ceiling for metadata, and the volume group's free extents shared out.

use serde::Serialize;

use crate::units::exact_bytes;

/// LVM's largest thin-pool metadata LV (dm-thin addresses a little under 16 GiB of metadata).
pub const META_MAX_BYTES: u64 = 15 << 30;
/// Thresholds below this would grow a pool that is mostly empty (LVM also treats 50 as its floor).
pub const MIN_THRESHOLD_PCT: u8 = 50;
pub const MAX_THRESHOLD_PCT: u8 = 95;

/// The operator's policy (flags `--auto-extend-*`, chart `pool.autoExtend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Grow a part once its fill reaches this percentage (50..=95).
    pub threshold_pct: u8,
    /// Grow it by this percentage of its current size (at least one extent).
    pub step_pct: u16,
    /// The data part never grows beyond this many bytes (`None`: as far as the VG allows).
    pub max_data_bytes: Option<u64>,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}% fill, by {}%", self.threshold_pct, self.step_pct)?;
        match self.max_data_bytes {
            Some(m) => write!(f, ", data up to {}", exact_bytes(m)),
            None => write!(f, ", as far as the volume group allows"),
        }
    }
}

/// The pool's parts as its status shows them, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    pub data_total: u64,
    pub data_used: u64,
    pub meta_total: u64,
    pub meta_used: u64,
}

/// The volume group's room: `vgs -o vg_extent_size,vg_free_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VgRoom {
    pub extent_bytes: u64,
    pub free_extents: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Data,
    Metadata,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Data => "data",
            Part::Metadata => "metadata",
        })
    }
}

/// One part's growth: from and to, in bytes (whole extents).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Growth {
    pub part: Part,
    pub from_bytes: u64,
    pub to_bytes: u64,
}

impl std::fmt::Display for Growth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} → {}", self.part, exact_bytes(self.from_bytes), exact_bytes(self.to_bytes))
    }
}

/// What a part above its threshold wants, before the VG is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Below the threshold.
    Nothing,
    /// Above it, and may grow to this many bytes.
    GrowTo(u64),
    /// Above it, but already at its ceiling.
    AtCeiling(u64),
}

fn above(used: u64, total: u64, threshold_pct: u8) -> bool {
    // used / total >= threshold / 100, without floating point.
    total > 0 && u128::from(used) * 100 >= u128::from(total) * u128::from(threshold_pct)
}

fn want(used: u64, total: u64, policy: &Policy, ceiling: u64) -> Want {
    if !above(used, total, policy.threshold_pct) {
        return Want::Nothing;
    }
    let step = (u128::from(total) * u128::from(policy.step_pct)).div_ceil(100);
    let to = (u128::from(total) + step).min(u128::from(ceiling)) as u64;
    if to <= total {
        Want::AtCeiling(ceiling)
    } else {
        Want::GrowTo(to)
    }
}

/// What each part wants from its fill alone.
pub fn wants(policy: &Policy, fill: &Fill) -> (Want, Want) {
    (
        want(fill.data_used, fill.data_total, policy, policy.max_data_bytes.unwrap_or(u64::MAX)),
        want(fill.meta_used, fill.meta_total, policy, META_MAX_BYTES),
    )
}

/// The decision for one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Both parts are below the threshold.
    Nothing,
    /// Grow these parts (`lvextend`), each by whole extents.
    Extend(Vec<Growth>),
    /// A part is above its threshold and cannot grow: at its ceiling, or the VG has no free
    /// extent. Said once per change (an Event and a warning), not at every check.
    Stuck(String),
}

/// Whole extents covering `bytes`.
fn extents(bytes: u64, extent: u64) -> u64 {
    bytes.div_ceil(extent.max(1))
}

/// Shares the VG's free extents out: metadata first (a pool out of metadata space stops, out of
/// data space it only refuses writes), then data. A part is rounded up to whole extents but never
/// past its ceiling.
pub fn decide(policy: &Policy, fill: &Fill, vg: &VgRoom) -> Decision {
    let (data, meta) = wants(policy, fill);
    if data == Want::Nothing && meta == Want::Nothing {
        return Decision::Nothing;
    }
    let extent = vg.extent_bytes.max(1);
    let mut free = vg.free_extents;
    let mut grow = Vec::new();
    let mut stuck = Vec::new();
    for (part, w, total, ceiling) in [
        (Part::Metadata, meta, fill.meta_total, META_MAX_BYTES),
        (Part::Data, data, fill.data_total, policy.max_data_bytes.unwrap_or(u64::MAX)),
    ] {
        match w {
            Want::Nothing => {}
            Want::AtCeiling(c) => stuck.push(format!(
                "{part} is at its maximum of {} and above {}% full",
                exact_bytes(c),
                policy.threshold_pct
            )),
            Want::GrowTo(to) => {
                // Whole extents, not past the ceiling (rounded down to an extent there).
                let room = ceiling.saturating_sub(total) / extent;
                let add = extents(to - total, extent).min(room).min(free);
                if add == 0 {
                    stuck.push(if free == 0 {
                        format!(
                            "{part} is above {}% full and the volume group has no free extent",
                            policy.threshold_pct
                        )
                    } else {
                        format!("{part} is above {}% full and within one extent of its maximum", policy.threshold_pct)
                    });
                    continue;
                }
                free -= add;
                grow.push(Growth { part, from_bytes: total, to_bytes: total + add * extent });
            }
        }
    }
    if grow.is_empty() {
        Decision::Stuck(stuck.join("; "))
    } else {
        Decision::Extend(grow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn policy(max: Option<u64>) -> Policy {
        Policy { threshold_pct: 80, step_pct: 20, max_data_bytes: max }
    }

    fn fill(data_total: u64, data_used: u64, meta_total: u64, meta_used: u64) -> Fill {
        Fill { data_total, data_used, meta_total, meta_used }
    }

    const VG: VgRoom = VgRoom { extent_bytes: 4 * MIB, free_extents: 10_000 };

    #[test]
    fn below_the_threshold_nothing_happens() {
        assert_eq!(decide(&policy(None), &fill(10 * GIB, 8 * GIB - 1, 64 * MIB, 0), &VG), Decision::Nothing);
        // An empty or zero-sized part never counts as full.
        assert_eq!(decide(&policy(None), &fill(0, 0, 0, 0), &VG), Decision::Nothing);
    }

    #[test]
    fn data_at_the_threshold_grows_by_the_step_in_whole_extents() {
        let d = decide(&policy(None), &fill(10 * GIB, 8 * GIB, 64 * MIB, MIB), &VG);
        // 20 % of 10 GiB is 2 GiB = 512 extents of 4 MiB.
        assert_eq!(d, Decision::Extend(vec![Growth { part: Part::Data, from_bytes: 10 * GIB, to_bytes: 12 * GIB }]));
        // A step that is not a whole number of extents is rounded up.
        let d = decide(&policy(None), &fill(10 * MIB, 9 * MIB, 64 * MIB, 0), &VG);
        assert_eq!(d, Decision::Extend(vec![Growth { part: Part::Data, from_bytes: 10 * MIB, to_bytes: 14 * MIB }]));
    }

    #[test]
    fn metadata_grows_first_when_the_vg_is_short() {
        let tight = VgRoom { extent_bytes: 4 * MIB, free_extents: 100 };
        let d = decide(&policy(None), &fill(10 * GIB, 9 * GIB, GIB, 900 * MIB), &tight);
        // Metadata wants 52 extents (20 % of 1 GiB, rounded up); data gets the 48 left.
        assert_eq!(
            d,
            Decision::Extend(vec![
                Growth { part: Part::Metadata, from_bytes: GIB, to_bytes: GIB + 52 * 4 * MIB },
                Growth { part: Part::Data, from_bytes: 10 * GIB, to_bytes: 10 * GIB + 48 * 4 * MIB },
            ])
        );
    }

    #[test]
    fn the_data_ceiling_is_kept() {
        // 20 % would be 12 GiB; the ceiling is 11 GiB.
        let d = decide(&policy(Some(11 * GIB)), &fill(10 * GIB, 9 * GIB, 64 * MIB, 0), &VG);
        assert_eq!(d, Decision::Extend(vec![Growth { part: Part::Data, from_bytes: 10 * GIB, to_bytes: 11 * GIB }]));
        // At the ceiling: stuck, and it says why.
        match decide(&policy(Some(11 * GIB)), &fill(11 * GIB, 10 * GIB, 64 * MIB, 0), &VG) {
            Decision::Stuck(why) => assert!(why.contains("data is at its maximum of 11Gi"), "{why}"),
            d => panic!("{d:?}"),
        }
        // Within one extent of the ceiling: it does not round past it.
        let d = decide(&policy(Some(10 * GIB + MIB)), &fill(10 * GIB, 9 * GIB, 64 * MIB, 0), &VG);
        assert!(matches!(d, Decision::Stuck(ref why) if why.contains("within one extent")), "{d:?}");
    }

    #[test]
    fn metadata_stops_at_lvms_maximum() {
        let d = decide(&policy(None), &fill(10 * GIB, 0, 15 * GIB - 4 * MIB, 15 * GIB - 5 * MIB), &VG);
        assert_eq!(
            d,
            Decision::Extend(vec![Growth {
                part: Part::Metadata,
                from_bytes: 15 * GIB - 4 * MIB,
                to_bytes: META_MAX_BYTES
            }])
        );
        assert!(matches!(
            decide(&policy(None), &fill(10 * GIB, 0, META_MAX_BYTES, META_MAX_BYTES), &VG),
            Decision::Stuck(_)
        ));
    }

    #[test]
    fn a_full_vg_is_stuck_not_an_error() {
        let none = VgRoom { extent_bytes: 4 * MIB, free_extents: 0 };
        match decide(&policy(None), &fill(10 * GIB, 10 * GIB, 64 * MIB, 60 * MIB), &none) {
            Decision::Stuck(why) => {
                assert!(why.contains("metadata is above 80% full and the volume group has no free extent"), "{why}");
                assert!(why.contains("data is above 80% full"), "{why}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let f = fill(u64::MAX, u64::MAX, 64 * MIB, 0);
        let big = VgRoom { extent_bytes: 4 * MIB, free_extents: u64::MAX };
        match decide(&policy(None), &f, &big) {
            Decision::Stuck(_) => {}
            d => panic!("{d:?}"),
        }
        assert!(above(u64::MAX, u64::MAX, 95));
    }

    #[test]
    fn the_policy_reads_well() {
        assert_eq!(policy(Some(GIB)).to_string(), "at 80% fill, by 20%, data up to 1Gi");
        let g = Growth { part: Part::Data, from_bytes: GIB, to_bytes: 2 * GIB };
        assert_eq!(g.to_string(), "data 1Gi → 2Gi");
    }
}
