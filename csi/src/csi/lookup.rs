//! Which object a request's id names on this node. The CSI spec: deleting an object that does not
//! exist succeeds, and using one (as a source, or on the node) is `NOT_FOUND`; an id that is not of
//! the form this driver hands out names no object, so it is treated exactly like a missing one. Only
//! an empty or over-long id is `INVALID_ARGUMENT`.

use super::error::CsiError;
use super::Driver;
use crate::dm::ThinPool;
use crate::mount::Mounter;
use crate::names::Name;
use crate::shared::ids::{NameRef, ObjectId};
use crate::store::{Kind, Record};

/// Where an id's object lives.
#[derive(Clone, Debug)]
pub enum Where {
    /// On this node, if it exists.
    Here(ObjectId),
    /// On another node (named as the id names it).
    Elsewhere(ObjectId),
    /// Nowhere: the id is not one this driver hands out (why).
    Nowhere(String),
}

/// Reads `id` (the request's `field`) for this `node`.
pub fn locate(id: &str, node: &str, field: &str) -> Result<Where, CsiError> {
    if id.is_empty() {
        return Err(CsiError::invalid(format!("{field} is empty")));
    }
    match ObjectId::parse(id) {
        Ok(o) if o.is_on(node) => Ok(Where::Here(o)),
        Ok(o) => Ok(Where::Elsewhere(o)),
        Err(e) if e.is_foreign() => Ok(Where::Nowhere(e.to_string())),
        Err(e) => Err(CsiError::invalid(format!("{field}: {e}"))),
    }
}

impl<P: ThinPool, M: Mounter> Driver<P, M> {
    /// The name of the object of `kind` that `id` names on this node: a readable id carries it;
    /// a compact one is the id of at most one record. `None` when no record has that id. Blocking.
    pub fn resolve(&self, kind: Kind, id: &ObjectId) -> Result<Option<Name>, CsiError> {
        Ok(match &id.name {
            NameRef::Full(name) => Some(name.clone()),
            NameRef::Digest { .. } => {
                self.engine.list(kind)?.into_iter().map(|r| r.name).find(|n| id.names(n, &self.node_id))
            }
        })
    }

    /// The record `id` names on this node, if there is one. Blocking.
    pub fn find(&self, kind: Kind, id: &ObjectId) -> Result<Option<Record>, CsiError> {
        match self.resolve(kind, id)? {
            Some(name) => Ok(self.engine.get(kind, name.as_str())?),
            None => Ok(None),
        }
    }

    /// Like [`find`](Self::find), but a missing object is `NOT_FOUND`.
    pub fn must_find(&self, kind: Kind, id: &ObjectId) -> Result<Record, CsiError> {
        self.find(kind, id)?.ok_or_else(|| CsiError::NotFound(format!("{kind} {id} not found")))
    }

    /// Like [`resolve`](Self::resolve), but a missing object is `NOT_FOUND`.
    pub fn must_resolve(&self, kind: Kind, id: &ObjectId) -> Result<Name, CsiError> {
        self.resolve(kind, id)?.ok_or_else(|| CsiError::NotFound(format!("{kind} {id} not found")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_located() {
        assert!(
            matches!(locate("", "n1", "volume_id"), Err(CsiError::InvalidArgument(m)) if m == "volume_id is empty")
        );
        assert!(matches!(locate(&"x".repeat(129), "n1", "volume_id"), Err(CsiError::InvalidArgument(_))));
        assert!(matches!(locate("pvc-1@n1", "n1", "volume_id"), Ok(Where::Here(_))));
        assert!(matches!(locate("pvc-1@n2", "n1", "volume_id"), Ok(Where::Elsewhere(_))));
        for foreign in ["fake-vol-id", "reallyfakesnapshotid", "a/b@n1", "x@Node"] {
            assert!(matches!(locate(foreign, "n1", "volume_id"), Ok(Where::Nowhere(_))), "{foreign}");
        }
    }
}
