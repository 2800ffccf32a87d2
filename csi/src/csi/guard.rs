//! A per-volume operation guard. CSI spec, "Concurrency": "In general the Cluster Orchestrator
//! (CO) is responsible for ensuring that there is no more than one call 'in-flight' per volume at
//! a given time. However, in some circumstances, the CO MAY lose state ... In such a case, the
//! Plugin SHOULD return ABORTED" for a second call on the same volume. The guard is held for the
//! length of a call and released on drop. A volume or snapshot is claimed by its kind and id,
//! also by the calls that name it (CreateVolume, CreateSnapshot: the id the name will have), so a
//! create and a delete of one volume meet here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::error::CsiError;
use crate::store::Kind;

#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

pub struct Guard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims the `kind` whose id is `id`, or fails with `ABORTED`. A call that names a new object
    /// claims the id it will have (`ObjectId::format`), so it meets the calls that carry that id.
    pub fn claim(&self, kind: Kind, id: &str) -> Result<Guard, CsiError> {
        let key = format!("{kind} {id}");
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.insert(key.clone()) {
            return Err(CsiError::Aborted(format!("an operation on {key} is already in progress")));
        }
        Ok(Guard { keys: self.keys.clone(), key })
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
        let g = f.claim(Kind::Volume, "v1@n").unwrap();
        assert!(matches!(f.claim(Kind::Volume, "v1@n"), Err(CsiError::Aborted(_))));
        assert!(f.claim(Kind::Volume, "v2@n").is_ok());
        assert!(f.claim(Kind::Snapshot, "v1@n").is_ok(), "a snapshot and a volume may share a name");
        drop(g);
        assert!(f.claim(Kind::Volume, "v1@n").is_ok());
    }
}
