//! CSI volume and snapshot ids: `<name>@<node>`. The node part lets a node tell "not here"
//! (a source on another node: `RESOURCE_EXHAUSTED`, so the provisioner reschedules) from
//! "does not exist" (`NOT_FOUND`). Names never contain `@` (see `names`), node names neither.

use crate::names::Name;

/// The longest id we hand out or accept (CSI asks for ids of at most 128 bytes).
pub const MAX_ID_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub name: Name,
    pub node: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong(usize),
    #[error("id {0:?} is not of the form <name>@<node> this driver hands out")]
    Malformed(String),
    #[error("id {id:?} has an invalid name: {source}")]
    Name {
        id: String,
        #[source]
        source: crate::names::NameError,
    },
}

/// A node name as Kubernetes allows it (DNS subdomain: lowercase alphanumerics, '-', '.').
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !n.starts_with(['-', '.'])
        && !n.contains("..")
}

impl ObjectId {
    pub fn parse(id: &str) -> Result<Self, IdError> {
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(id.len()));
        }
        let (name, node) = id.split_once('@').ok_or_else(|| IdError::Malformed(id.to_owned()))?;
        if !valid_node_name(node) {
            return Err(IdError::Malformed(id.to_owned()));
        }
        let name = Name::new(name).map_err(|source| IdError::Name { id: id.to_owned(), source })?;
        Ok(ObjectId { name, node: node.to_owned() })
    }

    /// The id for `name` on `node`, or an error when it would be too long.
    pub fn format(name: &Name, node: &str) -> Result<String, IdError> {
        let id = format!("{name}@{node}");
        if id.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(id.len()));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let n = Name::new("pvc-0f1e2d3c").unwrap();
        let id = ObjectId::format(&n, "worker-1.example").unwrap();
        assert_eq!(id, "pvc-0f1e2d3c@worker-1.example");
        assert_eq!(ObjectId::parse(&id).unwrap(), ObjectId { name: n, node: "worker-1.example".into() });
    }

    #[test]
    fn bad_ids_are_refused() {
        assert_eq!(ObjectId::parse(""), Err(IdError::Empty));
        assert!(matches!(ObjectId::parse(&format!("{}@n", "x".repeat(130))), Err(IdError::TooLong(_))));
        assert!(matches!(ObjectId::parse("no-node"), Err(IdError::Malformed(_))));
        assert!(matches!(ObjectId::parse("a/b@node"), Err(IdError::Name { .. })));
        assert!(matches!(ObjectId::parse("..@node"), Err(IdError::Name { .. })));
        assert!(matches!(ObjectId::parse("a@../etc"), Err(IdError::Malformed(_))));
        assert!(matches!(ObjectId::parse("a@Node"), Err(IdError::Malformed(_))));
        assert!(matches!(ObjectId::parse("a@b@c"), Err(IdError::Malformed(_))));
        assert!(matches!(ObjectId::parse("a\0@node"), Err(IdError::Name { .. })));
        assert!(ObjectId::format(&Name::new(&"x".repeat(128)).unwrap(), "n").is_err());
    }
}
