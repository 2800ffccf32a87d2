//! CSI volume and snapshot ids. The CSI spec caps ids at 128 bytes, while names may be 128 bytes
//! and Kubernetes node names 253, so an id cannot always hold both. Every id still says which
//! node holds the object, so a node tells "on another node" (`RESOURCE_EXHAUSTED` for a source,
//! so the provisioner reschedules) from "does not exist" (`NOT_FOUND`):
//!
//! - readable, whenever it fits (every id handed out before this scheme has this form):
//!   `<name>@<node>`, e.g. `pvc-0f1e…@worker-1`;
//! - compact, when `<name>@<node>` is over 128 bytes: a node name of up to 63 bytes is kept,
//!   a longer one becomes `~` and 20 hex digits of its SHA-256; the name is kept whole when it
//!   then fits, else its first bytes are followed by `~` and 32 hex digits of its SHA-256.
//!
//! Names never contain `@` or `~` (see `names`), node names neither, so both forms parse without
//! ambiguity. A compact name is resolved by the record whose own id is the same text.

use sha2::{Digest, Sha256};

use crate::names::Name;

/// The longest id we hand out or accept (CSI asks for ids of at most 128 bytes).
pub const MAX_ID_LEN: usize = 128;
/// The longest node name a compact id keeps readable.
const NODE_KEPT_MAX: usize = 63;
const NODE_DIGEST_HEX: usize = 20;
const NAME_DIGEST_HEX: usize = 32;
const MARK: char = '~';

/// The name part of an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameRef {
    /// The whole name.
    Full(Name),
    /// The first bytes of a long name and the hex digest of all of it.
    Digest { head: String, digest: String },
}

/// The node part of an id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRef {
    Full(String),
    /// The hex digest of a long node name.
    Digest(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectId {
    pub name: NameRef,
    pub node: NodeRef,
    text: String,
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

impl IdError {
    /// Whether the id is well-formed CSI but not one this driver hands out: no object of ours can
    /// have it, so the caller answers "not found" (or, for a delete, success).
    pub fn is_foreign(&self) -> bool {
        matches!(self, IdError::Malformed(_) | IdError::Name { .. })
    }
}

/// A node name as Kubernetes allows it (DNS subdomain: lowercase alphanumerics, '-', '.').
pub fn valid_node_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !n.starts_with(['-', '.'])
        && !n.contains("..")
}

fn hex_digest(text: &str, digits: usize) -> String {
    let hash = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in hash.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.truncate(digits);
    hex
}

fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ObjectId {
    /// The id of `name` on `node`: readable when it fits, compact otherwise; never over 128 bytes.
    pub fn format(name: &Name, node: &str) -> String {
        let readable = format!("{name}@{node}");
        if readable.len() <= MAX_ID_LEN {
            return readable;
        }
        let node_part = if node.len() <= NODE_KEPT_MAX {
            node.to_owned()
        } else {
            format!("{MARK}{}", hex_digest(node, NODE_DIGEST_HEX))
        };
        let room = MAX_ID_LEN - 1 - node_part.len();
        let name_part = if name.as_str().len() <= room {
            name.as_str().to_owned()
        } else {
            // Names are ASCII, so any byte count is a character boundary.
            let head = &name.as_str()[..room - 1 - NAME_DIGEST_HEX];
            format!("{head}{MARK}{}", hex_digest(name.as_str(), NAME_DIGEST_HEX))
        };
        format!("{name_part}@{node_part}")
    }

    pub fn parse(id: &str) -> Result<Self, IdError> {
        if id.is_empty() {
            return Err(IdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(id.len()));
        }
        let malformed = || IdError::Malformed(id.to_owned());
        let (name_part, node_part) = id.split_once('@').ok_or_else(malformed)?;
        let node = match node_part.strip_prefix(MARK) {
            Some(d) if is_hex(d, NODE_DIGEST_HEX) => NodeRef::Digest(d.to_owned()),
            Some(_) => return Err(malformed()),
            None if valid_node_name(node_part) => NodeRef::Full(node_part.to_owned()),
            None => return Err(malformed()),
        };
        let name = match name_part.split_once(MARK) {
            Some((head, digest)) => {
                if !is_hex(digest, NAME_DIGEST_HEX) || (!head.is_empty() && Name::new(head).is_err()) {
                    return Err(malformed());
                }
                NameRef::Digest { head: head.to_owned(), digest: digest.to_owned() }
            }
            None => NameRef::Full(Name::new(name_part).map_err(|source| IdError::Name { id: id.to_owned(), source })?),
        };
        Ok(ObjectId { name, node, text: id.to_owned() })
    }

    /// Whether the object lives on `node`.
    pub fn is_on(&self, node: &str) -> bool {
        match &self.node {
            NodeRef::Full(n) => n == node,
            NodeRef::Digest(d) => *d == hex_digest(node, NODE_DIGEST_HEX),
        }
    }

    /// The node as the id says it (a digest for a long node name).
    pub fn node_label(&self) -> String {
        match &self.node {
            NodeRef::Full(n) => n.clone(),
            NodeRef::Digest(d) => format!("{MARK}{d}"),
        }
    }

    /// Whether this is the id of `name` on `node`.
    pub fn names(&self, name: &Name, node: &str) -> bool {
        Self::format(name, node) == self.text
    }
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> Name {
        Name::new(n).unwrap()
    }

    #[test]
    fn ids_round_trip() {
        let n = name("pvc-0f1e2d3c");
        let id = ObjectId::format(&n, "worker-1.example");
        assert_eq!(id, "pvc-0f1e2d3c@worker-1.example");
        let parsed = ObjectId::parse(&id).unwrap();
        assert_eq!(parsed.name, NameRef::Full(n.clone()));
        assert!(parsed.is_on("worker-1.example"));
        assert!(!parsed.is_on("worker-2"));
        assert!(parsed.names(&n, "worker-1.example"));
    }

    /// Every id handed out before the compact form keeps its meaning (existing PVs keep working).
    #[test]
    fn ids_from_before_the_compact_form_still_resolve() {
        for (id, n, node) in [
            (
                "pvc-5b7a0f0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b@kind-worker",
                "pvc-5b7a0f0e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                "kind-worker",
            ),
            (
                "snapshot-0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f@node-1",
                "snapshot-0c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f",
                "node-1",
            ),
        ] {
            let parsed = ObjectId::parse(id).unwrap();
            assert_eq!(parsed.name, NameRef::Full(name(n)));
            assert!(parsed.is_on(node));
            assert_eq!(ObjectId::format(&name(n), node), id);
        }
    }

    /// Every valid name (up to 128 bytes) on every valid node name (up to 253) gets an id of at
    /// most 128 bytes that parses, names only that object, and tells its node from others.
    #[test]
    fn every_name_on_every_node_fits() {
        let long_node = format!("{}.example", "n".repeat(245));
        assert_eq!(long_node.len(), 253);
        let nodes = ["n".to_owned(), "worker-1".to_owned(), "m".repeat(63), "m".repeat(64), "a".repeat(120), long_node];
        for node in &nodes {
            for len in [1, 40, 45, 63, 64, 86, 87, 100, 127, 128] {
                let n = name(&"v".repeat(len));
                let id = ObjectId::format(&n, node);
                assert!(id.len() <= MAX_ID_LEN, "{len} on {}: {} bytes", node.len(), id.len());
                let parsed = ObjectId::parse(&id).unwrap();
                assert!(parsed.is_on(node), "{id}");
                assert!(!parsed.is_on("other-node"), "{id}");
                assert!(parsed.names(&n, node), "{id}");
                let sibling = name(&format!("w{}", "v".repeat(len - 1)));
                assert!(!parsed.names(&sibling, node), "{id}");
            }
        }
        // Names that differ only past the kept head get different ids.
        let a = name(&format!("{}a", "x".repeat(127)));
        let b = name(&format!("{}b", "x".repeat(127)));
        assert_ne!(ObjectId::format(&a, "worker-1"), ObjectId::format(&b, "worker-1"));
    }

    #[test]
    fn compact_ids_stay_readable_where_they_can() {
        let n = name(&"p".repeat(125));
        // A short node stays readable; the name gives way.
        let id = ObjectId::format(&n, "worker-1");
        assert!(id.ends_with("@worker-1") && id.contains('~'), "{id}");
        assert!(id.starts_with("ppppp"));
        // A long node gives way; a short name stays whole.
        let long = "a".repeat(200);
        let id = ObjectId::format(&name("pvc-1"), &long);
        assert!(id.starts_with("pvc-1@~"), "{id}");
        assert!(matches!(ObjectId::parse(&id).unwrap().name, NameRef::Full(_)));
    }

    #[test]
    fn bad_ids_are_refused() {
        assert_eq!(ObjectId::parse(""), Err(IdError::Empty));
        assert!(matches!(ObjectId::parse(&format!("{}@n", "x".repeat(130))), Err(IdError::TooLong(_))));
        for foreign in ["no-node", "a@../etc", "a@Node", "a@b@c", "a@~zz", "a~123@node", "a@~0123", "fake-vol-id"] {
            let e = ObjectId::parse(foreign).unwrap_err();
            assert!(e.is_foreign(), "{foreign}: {e:?}");
        }
        for bad_name in ["a/b@node", "..@node", "a\0@node"] {
            assert!(matches!(ObjectId::parse(bad_name), Err(IdError::Name { .. })), "{bad_name}");
        }
        assert!(!IdError::Empty.is_foreign());
        assert!(!IdError::TooLong(200).is_foreign());
    }
}
