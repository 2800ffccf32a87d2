//! What the store keeps: one record per volume or snapshot, one per group snapshot, and the open
//! intent of a pool change.

use serde::{Deserialize, Serialize};

use crate::names::Name;
use crate::units::ThinId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Volume,
    Snapshot,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Volume => "volume",
            Kind::Snapshot => "snapshot",
        })
    }
}

/// Where a thin device's first contents came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A volume restored from this snapshot.
    Snapshot(Name),
    /// A clone of this volume, or (for a snapshot) its origin volume.
    Volume(Name),
}

impl Source {
    /// `volume/x`, `snapshot/y`, or `nothing` for a device made empty.
    pub fn describe(source: Option<&Source>) -> String {
        source.map_or("nothing".to_owned(), |s| s.to_string())
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Snapshot(n) => write!(f, "snapshot/{n}"),
            Source::Volume(n) => write!(f, "volume/{n}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: Name,
    pub kind: Kind,
    pub thin_id: ThinId,
    /// Current virtual size in bytes (grows with expansion).
    pub size_bytes: u64,
    /// The size asked for at creation: with `source`, what makes a repeated create "the same".
    pub requested_bytes: u64,
    pub source: Option<Source>,
    pub created_unix: u64,
    /// The group snapshot this snapshot was taken in: it is deleted with its group, never alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Name>,
}

/// A group snapshot: snapshots of several volumes taken at one instant, made and deleted whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: Name,
    /// Its snapshots, by name, sorted.
    pub members: Vec<Name>,
    pub created_unix: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// `create_thin`, or `create_snap` when the intent names an origin.
    Create,
    /// `delete` of a record waiting in the deleting table.
    Delete,
}

/// A pool change in flight: written before the message, cleared after the record change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub op: Op,
    pub record: Record,
    pub origin: Option<ThinId>,
    /// The pool transaction id this change commits as (pool's id + 1 when it began).
    pub tid: u64,
}
