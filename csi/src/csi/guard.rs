//! A per-volume operation guard. CSI spec, "Concurrency": "In general the Cluster Orchestrator
//! (CO) is responsible for ensuring that there is no more than one call 'in-flight' per volume at
//! a given time. However, in some circumstances, the CO MAY lose state ... In such a case, the
//! Plugin SHOULD return ABORTED" for a second call on the same volume. The guard is held for the
//! length of a call and released on drop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::error::CsiError;

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

pub struct Guard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `key` (a volume or snapshot id, or a name) or fails with `ABORTED`.
    pub fn claim(&self, key: &str) -> Result<Guard, CsiError> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.insert(key.to_owned()) {
            return Err(CsiError::Aborted(format!("an operation on {key} is already in progress")));
        }
        Ok(Guard { keys: self.keys.clone(), key: key.to_owned() })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_is_aborted_until_the_first_ends() {
        let f = InFlight::default();
        let g = f.claim("v1").unwrap();
        assert!(matches!(f.claim("v1"), Err(CsiError::Aborted(_))));
        assert!(f.claim("v2").is_ok());
        drop(g);
        assert!(f.claim("v1").is_ok());
    }
}
