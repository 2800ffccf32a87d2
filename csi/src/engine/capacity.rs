//! Capacity arithmetic, one function for everything that reports or admits space (the CLI, the
//! CSI GetCapacity, the ThinPool status, admission):
//! allowed new provisioning = ratio × data total − provisioned, and zero while data or metadata
//! fill is above its limit or the pool is not writable.

use serde::Serialize;

use super::error::Refusal;
use crate::dm::status::{PoolMode, PoolStatus, META_BLOCK_BYTES};

/// Admission limits: how much may be provisioned per byte of pool data, and the data and metadata
/// fill above which nothing new is admitted. The node's flags set them (`config`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub overprovision_ratio: f64,
    pub data_fill_limit_pct: f64,
    pub meta_fill_limit_pct: f64,
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "overprovision ratio {}, data fill limit {}%, metadata fill limit {}%",
            self.overprovision_ratio, self.data_fill_limit_pct, self.meta_fill_limit_pct
        )
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { overprovision_ratio: 5.0, data_fill_limit_pct: 90.0, meta_fill_limit_pct: 80.0 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolState {
    Rw,
    Ro,
    OutOfDataSpace,
    NeedsCheck,
    Fail,
}

impl std::fmt::Display for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolState::Rw => "rw",
            PoolState::Ro => "ro",
            PoolState::OutOfDataSpace => "out_of_data_space",
            PoolState::NeedsCheck => "needs_check",
            PoolState::Fail => "fail",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Capacity {
    pub state: PoolState,
    pub transaction_id: Option<u64>,
    pub data_total_bytes: u64,
    pub data_used_bytes: u64,
    pub metadata_total_bytes: u64,
    pub metadata_used_bytes: u64,
    pub provisioned_bytes: u64,
    pub allowed_new_bytes: u64,
    /// Why nothing more may be provisioned, when that is the case for a reason other than budget.
    pub refusal: Option<Refusal>,
}

fn pct(used: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        used as f64 * 100.0 / total as f64
    }
}

impl Capacity {
    pub fn data_fill_pct(&self) -> f64 {
        pct(self.data_used_bytes, self.data_total_bytes)
    }
    pub fn metadata_fill_pct(&self) -> f64 {
        pct(self.metadata_used_bytes, self.metadata_total_bytes)
    }
    pub fn overprovision_pct(&self) -> f64 {
        pct(self.provisioned_bytes, self.data_total_bytes)
    }

    /// Admits a new device of `bytes` virtual bytes, or says why not.
    pub fn admit(&self, bytes: u64) -> Result<(), Refusal> {
        if let Some(r) = &self.refusal {
            return Err(r.clone());
        }
        if bytes > self.allowed_new_bytes {
            return Err(Refusal::Budget { requested: bytes, allowed: self.allowed_new_bytes });
        }
        Ok(())
    }
}

/// The pool's state from its status alone.
pub fn state_of(status: &PoolStatus) -> PoolState {
    match status {
        PoolStatus::Fail => PoolState::Fail,
        PoolStatus::Working(s) => match (s.needs_check, s.mode) {
            (true, _) => PoolState::NeedsCheck,
            (false, PoolMode::Rw) => PoolState::Rw,
            (false, PoolMode::Ro) => PoolState::Ro,
            (false, PoolMode::OutOfDataSpace) => PoolState::OutOfDataSpace,
        },
    }
}

/// The pool's capacity from its status, data block size, what is provisioned, and the limits.
pub fn capacity(status: &PoolStatus, block_bytes: u64, provisioned_bytes: u64, limits: &Limits) -> Capacity {
    let PoolStatus::Working(s) = status else {
        return Capacity {
            state: state_of(status),
            transaction_id: None,
            data_total_bytes: 0,
            data_used_bytes: 0,
            metadata_total_bytes: 0,
            metadata_used_bytes: 0,
            provisioned_bytes,
            allowed_new_bytes: 0,
            refusal: Some(Refusal::PoolFailed),
        };
    };
    let mut cap = Capacity {
        state: state_of(status),
        transaction_id: Some(s.transaction_id),
        data_total_bytes: s.data_total.saturating_mul(block_bytes),
        data_used_bytes: s.data_used.saturating_mul(block_bytes),
        metadata_total_bytes: s.meta_total.saturating_mul(META_BLOCK_BYTES),
        metadata_used_bytes: s.meta_used.saturating_mul(META_BLOCK_BYTES),
        provisioned_bytes,
        allowed_new_bytes: 0,
        refusal: None,
    };
    cap.refusal = if s.needs_check {
        Some(Refusal::NeedsCheck)
    } else if cap.state == PoolState::OutOfDataSpace {
        Some(Refusal::OutOfDataSpace)
    } else if cap.state != PoolState::Rw {
        Some(Refusal::PoolMode { mode: cap.state.to_string() })
    } else if cap.data_fill_pct() > limits.data_fill_limit_pct {
        Some(Refusal::DataFill { fill_pct: cap.data_fill_pct(), limit_pct: limits.data_fill_limit_pct })
    } else if cap.metadata_fill_pct() > limits.meta_fill_limit_pct {
        Some(Refusal::MetadataFill { fill_pct: cap.metadata_fill_pct(), limit_pct: limits.meta_fill_limit_pct })
    } else {
        None
    };
    if cap.refusal.is_none() {
        let budget = (cap.data_total_bytes as f64 * limits.overprovision_ratio).min(u64::MAX as f64) as u64;
        cap.allowed_new_bytes = budget.saturating_sub(provisioned_bytes);
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dm::status::{Discard, NoSpacePolicy, WorkingStatus};
    use proptest::prelude::*;

    fn status(data_used: u64, data_total: u64, meta_used: u64, meta_total: u64) -> WorkingStatus {
        WorkingStatus {
            transaction_id: 3,
            meta_used,
            meta_total,
            data_used,
            data_total,
            held_root: None,
            mode: PoolMode::Rw,
            discard: Discard::Passdown,
            no_space: NoSpacePolicy::Queue,
            needs_check: false,
            meta_low_water: None,
        }
    }

    const BLOCK: u64 = 64 << 10;
    const LIMITS: Limits = Limits { overprovision_ratio: 2.0, data_fill_limit_pct: 90.0, meta_fill_limit_pct: 80.0 };

    #[test]
    fn budget_is_ratio_times_data_minus_provisioned() {
        // 1 GiB of data (16384 blocks of 64 KiB), ratio 2: 2 GiB budget.
        let c = capacity(&PoolStatus::Working(status(0, 16384, 10, 1000)), BLOCK, 512 << 20, &LIMITS);
        assert_eq!(c.data_total_bytes, 1 << 30);
        assert_eq!(c.allowed_new_bytes, (2 << 30) - (512 << 20));
        assert!(c.admit(1 << 30).is_ok());
        assert_eq!(c.admit(2 << 30), Err(Refusal::Budget { requested: 2 << 30, allowed: (2 << 30) - (512 << 20) }));
        let over = capacity(&PoolStatus::Working(status(0, 16384, 10, 1000)), BLOCK, 3 << 30, &LIMITS);
        assert_eq!(over.allowed_new_bytes, 0);
    }

    #[test]
    fn fill_limits_and_modes_stop_provisioning() {
        let full = capacity(&PoolStatus::Working(status(15000, 16384, 10, 1000)), BLOCK, 0, &LIMITS);
        assert!(matches!(full.refusal, Some(Refusal::DataFill { .. })));
        assert_eq!(full.allowed_new_bytes, 0);
        let meta = capacity(&PoolStatus::Working(status(0, 16384, 900, 1000)), BLOCK, 0, &LIMITS);
        assert!(matches!(meta.refusal, Some(Refusal::MetadataFill { .. })));
        let mut ro = status(0, 16384, 10, 1000);
        ro.mode = PoolMode::Ro;
        let c = capacity(&PoolStatus::Working(ro.clone()), BLOCK, 0, &LIMITS);
        assert_eq!((c.state, c.allowed_new_bytes), (PoolState::Ro, 0));
        assert_eq!(c.admit(1), Err(Refusal::PoolMode { mode: "ro".into() }));
        ro.needs_check = true;
        let c = capacity(&PoolStatus::Working(ro), BLOCK, 0, &LIMITS);
        assert_eq!((c.state, c.admit(1)), (PoolState::NeedsCheck, Err(Refusal::NeedsCheck)));
        let f = capacity(&PoolStatus::Fail, BLOCK, 7, &LIMITS);
        assert_eq!((f.state, f.allowed_new_bytes, f.provisioned_bytes), (PoolState::Fail, 0, 7));
        let mut oods = status(16384, 16384, 10, 1000);
        oods.mode = PoolMode::OutOfDataSpace;
        let c = capacity(&PoolStatus::Working(oods), BLOCK, 0, &LIMITS);
        assert_eq!((c.state, c.allowed_new_bytes), (PoolState::OutOfDataSpace, 0));
        assert_eq!(c.admit(1), Err(Refusal::OutOfDataSpace));
    }

    #[test]
    fn exactly_at_the_limit_is_still_allowed() {
        // 80 % metadata exactly is at, not above, the limit.
        let c = capacity(&PoolStatus::Working(status(0, 100, 800, 1000)), BLOCK, 0, &LIMITS);
        assert_eq!(c.refusal, None);
        assert_eq!(c.metadata_fill_pct(), 80.0);
    }

    proptest! {
        #[test]
        fn allowed_never_exceeds_budget_and_never_underflows(
            used in 0u64..1 << 30, total in 1u64..1 << 30, prov in any::<u64>(), ratio in 1.0f64..100.0
        ) {
            let used = used.min(total);
            let limits = Limits { overprovision_ratio: ratio, data_fill_limit_pct: 100.0, meta_fill_limit_pct: 100.0 };
            let c = capacity(&PoolStatus::Working(status(used, total, 1, 10)), BLOCK, prov, &limits);
            let budget = (total as f64 * BLOCK as f64 * ratio).min(u64::MAX as f64) as u64;
            prop_assert!(c.allowed_new_bytes <= budget);
            prop_assert!(c.allowed_new_bytes == budget.saturating_sub(prov));
            if c.allowed_new_bytes > 0 { prop_assert!(c.admit(c.allowed_new_bytes).is_ok()); }
            prop_assert!(c.admit(c.allowed_new_bytes.saturating_add(1)).is_err() || c.allowed_new_bytes == u64::MAX);
        }
    }
}
