//! The node's durable records in an embedded transactional store (redb) under the state
//! directory: volumes, snapshots, group snapshots, records being deleted, ids in use, the open intent of a pool
//! change, the pool transaction id the records match, and the pool's identity.
//! Each method is one store transaction.

pub mod ids;
pub mod records;

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub use records::{GroupRecord, Intent, Kind, Op, Record, Source};

use crate::names::Name;
use crate::units::ThinId;

const VOLUMES: TableDefinition<&str, &[u8]> = TableDefinition::new("volumes");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const DELETING: TableDefinition<u32, &[u8]> = TableDefinition::new("deleting");
const INTENTS: TableDefinition<u32, &[u8]> = TableDefinition::new("intents");
const USED_IDS: TableDefinition<u32, ()> = TableDefinition::new("used_ids");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const POOL: TableDefinition<&str, &str> = TableDefinition::new("pool");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");

const POOL_TID: &str = "pool_tid";
const NEXT_ID: &str = "next_id";

/// Builds a new record once its thin id is allocated.
pub type MakeRecord = Box<dyn FnOnce(ThinId) -> Record>;

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    match kind {
        Kind::Volume => VOLUMES,
        Kind::Snapshot => SNAPSHOTS,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("state store {path} is in use by another thinpool-csi process; stop it or use another --state-dir")]
    Locked { path: PathBuf },
    #[error("creating state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store holds an unreadable record: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("every thin id (24-bit) is in use")]
    IdsExhausted,
    #[error("{kind} {name} is not in the store")]
    Missing { kind: Kind, name: Name },
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

fn ser<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(v)?)
}

fn de<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(b)?)
}

impl Store {
    /// Whether `dir` holds a store (a node that has managed a pool with it).
    pub fn exists(dir: &Path) -> bool {
        dir.join("records.redb").is_file()
    }

    /// Opens (or creates) the store in `dir`, which is created with private permissions.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let dir_err = |source| StoreError::Dir { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(dir_err)?;
        let path = dir.join("records.redb");
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            e => StoreError::Db { path: path.clone(), source: e.into() },
        })?;
        let store = Store { db, path };
        store.write(|txn| {
            // Create every table so that readers never meet a missing one.
            txn.open_table(VOLUMES)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(DELETING)?;
            txn.open_table(INTENTS)?;
            txn.open_table(USED_IDS)?;
            txn.open_table(META)?;
            txn.open_table(POOL)?;
            txn.open_table(GROUPS)?;
            Ok(())
        })?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |source| StoreError::Db { path: self.path.clone(), source }
    }

    /// Runs `f` in one write transaction and commits it durably.
    fn write<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T, TxnError>) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err()(e.into()))?;
        let out = match f(&txn) {
            Ok(v) => v,
            Err(TxnError::Db(e)) => return Err(self.db_err()(e)),
            Err(TxnError::Store(e)) => return Err(e),
        };
        txn.commit().map_err(|e| self.db_err()(e.into()))?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, TxnError>) -> Result<T, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err()(e.into()))?;
        f(&txn).map_err(|e| match e {
            TxnError::Db(e) => self.db_err()(e),
            TxnError::Store(e) => e,
        })
    }

    /// The pool transaction id the records match, or `None` before the pool was first adopted.
    pub fn pool_tid(&self) -> Result<Option<u64>, StoreError> {
        self.read(|t| Ok(t.open_table(META)?.get(POOL_TID)?.map(|v| v.value())))
    }

    /// Which pool the records belong to (kind and source), once adopted.
    pub fn pool_identity(&self) -> Result<Option<String>, StoreError> {
        self.read(|t| Ok(t.open_table(POOL)?.get("identity")?.map(|v| v.value().to_owned())))
    }

    /// Marks the store as belonging to `identity`, whose transaction id is `tid`.
    pub fn adopt_pool(&self, identity: &str, tid: u64) -> Result<(), StoreError> {
        self.write(|t| {
            t.open_table(POOL)?.insert("identity", identity)?;
            t.open_table(META)?.insert(POOL_TID, tid)?;
            Ok(())
        })
    }

    pub fn get(&self, kind: Kind, name: &Name) -> Result<Option<Record>, StoreError> {
        self.read(|t| match t.open_table(table(kind))?.get(name.as_str())? {
            Some(v) => Ok(Some(de(v.value())?)),
            None => Ok(None),
        })
    }

    pub fn list(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.read(|t| {
            let tbl = t.open_table(table(kind))?;
            let mut out = Vec::new();
            for entry in tbl.iter()? {
                out.push(de(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    /// Records whose delete has begun but not committed (deferred while busy, or interrupted).
    pub fn deleting(&self) -> Result<Vec<Record>, StoreError> {
        self.read(|t| {
            let mut out = Vec::new();
            for entry in t.open_table(DELETING)?.iter()? {
                out.push(de(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    pub fn intents(&self) -> Result<Vec<Intent>, StoreError> {
        self.read(|t| {
            let mut out = Vec::new();
            for entry in t.open_table(INTENTS)?.iter()? {
                out.push(de(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    /// Step 1 of a create: allocates a thin id that is not in use, builds the record with it and
    /// writes the intent, in one transaction.
    pub fn begin_create(
        &self,
        tid: u64,
        origin: Option<ThinId>,
        make: impl FnOnce(ThinId) -> Record,
    ) -> Result<Intent, StoreError> {
        self.write(|t| begin_create_in(t, tid, origin, make))
    }

    /// Step 1 of a group snapshot: one intent per member (`(origin, record maker)`), all committing
    /// as the same pool transaction `tid`, written in one transaction: recovery then finds either
    /// every member's intent or none, and the decision table treats them alike.
    pub fn begin_group_create(&self, tid: u64, members: Vec<(ThinId, MakeRecord)>) -> Result<Vec<Intent>, StoreError> {
        self.write(|t| members.into_iter().map(|(origin, make)| begin_create_in(t, tid, Some(origin), make)).collect())
    }

    /// Moves a record to the deleting table: from here on its delete is carried to the end,
    /// now or (while busy) later.
    pub fn mark_deleting(&self, kind: Kind, name: &Name) -> Result<Record, StoreError> {
        self.write(|t| {
            let removed = t.open_table(table(kind))?.remove(name.as_str())?.map(|v| de::<Record>(v.value()));
            let record = match removed {
                Some(r) => r?,
                None => return Err(TxnError::Store(StoreError::Missing { kind, name: name.clone() })),
            };
            t.open_table(DELETING)?.insert(record.thin_id.get(), ser(&record)?.as_slice())?;
            Ok(record)
        })
    }

    /// Step 1 of a delete: writes the intent for a record in the deleting table.
    pub fn begin_delete(&self, tid: u64, record: Record) -> Result<Intent, StoreError> {
        let intent = Intent { op: Op::Delete, record, origin: None, tid };
        self.write(|t| {
            t.open_table(INTENTS)?.insert(intent.record.thin_id.get(), ser(&intent)?.as_slice())?;
            Ok(())
        })?;
        Ok(intent)
    }

    /// Step 4: applies the record change, clears the intent and records the pool's new
    /// transaction id, in one transaction.
    pub fn commit(&self, intent: &Intent) -> Result<(), StoreError> {
        self.write(|t| commit_in(t, intent))
    }

    /// Step 4 of a group snapshot: every member's record and the group's, in one transaction.
    pub fn commit_all(&self, intents: &[Intent]) -> Result<(), StoreError> {
        self.write(|t| intents.iter().try_for_each(|i| commit_in(t, i)))
    }

    /// Drops the intents of a group snapshot that did not happen (or was undone), in one
    /// transaction.
    pub fn abort_all(&self, intents: &[Intent]) -> Result<(), StoreError> {
        self.write(|t| intents.iter().try_for_each(|i| abort_in(t, i)))
    }

    /// Drops an intent whose pool change did not happen (or was undone). A create's id is freed;
    /// a delete's record stays in the deleting table for a later try.
    pub fn abort(&self, intent: &Intent) -> Result<(), StoreError> {
        self.write(|t| abort_in(t, intent))
    }

    pub fn group(&self, name: &Name) -> Result<Option<GroupRecord>, StoreError> {
        self.read(|t| match t.open_table(GROUPS)?.get(name.as_str())? {
            Some(v) => Ok(Some(de(v.value())?)),
            None => Ok(None),
        })
    }

    pub fn groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.read(|t| {
            let mut out = Vec::new();
            for entry in t.open_table(GROUPS)?.iter()? {
                out.push(de(entry?.1.value())?);
            }
            Ok(out)
        })
    }

    /// Deletes a group snapshot's record and moves all its snapshots to the deleting table, in one
    /// transaction: from here on each member's delete is carried to the end (now, or while one is
    /// busy, later), and no half of the group is left to be used. Returns the members moved, or
    /// `None` when there is no such group.
    pub fn mark_group_deleting(&self, name: &Name) -> Result<Option<Vec<Record>>, StoreError> {
        self.write(|t| {
            let removed = t.open_table(GROUPS)?.remove(name.as_str())?.map(|v| de::<GroupRecord>(v.value()));
            let Some(group) = removed.transpose()? else { return Ok(None) };
            let mut snapshots = t.open_table(SNAPSHOTS)?;
            let mut deleting = t.open_table(DELETING)?;
            let mut moved = Vec::new();
            for member in &group.members {
                let Some(record) = snapshots.remove(member.as_str())?.map(|v| de::<Record>(v.value())).transpose()?
                else {
                    continue;
                };
                deleting.insert(record.thin_id.get(), ser(&record)?.as_slice())?;
                moved.push(record);
            }
            Ok(Some(moved))
        })
    }

    /// Records a new size after an expansion.
    pub fn set_size(&self, kind: Kind, name: &Name, size_bytes: u64) -> Result<Record, StoreError> {
        self.write(|t| {
            let mut tbl = t.open_table(table(kind))?;
            let current = tbl.get(name.as_str())?.map(|v| de::<Record>(v.value()));
            let mut record = match current {
                Some(r) => r?,
                None => return Err(TxnError::Store(StoreError::Missing { kind, name: name.clone() })),
            };
            record.size_bytes = size_bytes;
            tbl.insert(name.as_str(), ser(&record)?.as_slice())?;
            Ok(record)
        })
    }
}

fn begin_create_in(
    t: &redb::WriteTransaction,
    tid: u64,
    origin: Option<ThinId>,
    make: impl FnOnce(ThinId) -> Record,
) -> Result<Intent, TxnError> {
    let mut meta = t.open_table(META)?;
    let mut used = t.open_table(USED_IDS)?;
    let cursor = meta.get(NEXT_ID)?.map_or(ids::FIRST_ID, |v| v.value() as u32);
    let mut lookup_err = None;
    let id = ids::allocate(cursor, |i| match used.get(i) {
        Ok(v) => v.is_some(),
        Err(e) => {
            lookup_err = Some(e);
            true
        }
    });
    if let Some(e) = lookup_err {
        return Err(TxnError::Db(e.into()));
    }
    let id = id.ok_or(TxnError::Store(StoreError::IdsExhausted))?;
    used.insert(id.get(), ())?;
    meta.insert(NEXT_ID, ids::next_cursor(id) as u64)?;
    let intent = Intent { op: Op::Create, record: make(id), origin, tid };
    t.open_table(INTENTS)?.insert(id.get(), ser(&intent)?.as_slice())?;
    Ok(intent)
}

fn commit_in(t: &redb::WriteTransaction, intent: &Intent) -> Result<(), TxnError> {
    let id = intent.record.thin_id.get();
    match intent.op {
        Op::Create => {
            let r = &intent.record;
            t.open_table(table(r.kind))?.insert(r.name.as_str(), ser(r)?.as_slice())?;
            if let Some(group) = &r.group {
                // The group's record gains this member (made with the first one committed).
                let mut groups = t.open_table(GROUPS)?;
                let current = groups.get(group.as_str())?.map(|v| de::<GroupRecord>(v.value())).transpose()?;
                let mut g = current.unwrap_or_else(|| GroupRecord {
                    name: group.clone(),
                    members: vec![],
                    created_unix: r.created_unix,
                });
                if let Err(at) = g.members.binary_search(&r.name) {
                    g.members.insert(at, r.name.clone());
                }
                groups.insert(group.as_str(), ser(&g)?.as_slice())?;
            }
        }
        Op::Delete => {
            t.open_table(DELETING)?.remove(id)?;
            t.open_table(USED_IDS)?.remove(id)?;
        }
    }
    t.open_table(INTENTS)?.remove(id)?;
    t.open_table(META)?.insert(POOL_TID, intent.tid)?;
    Ok(())
}

fn abort_in(t: &redb::WriteTransaction, intent: &Intent) -> Result<(), TxnError> {
    let id = intent.record.thin_id.get();
    t.open_table(INTENTS)?.remove(id)?;
    if intent.op == Op::Create {
        t.open_table(USED_IDS)?.remove(id)?;
    }
    Ok(())
}

/// Errors inside a transaction closure.
enum TxnError {
    Db(redb::Error),
    Store(StoreError),
}

impl<E: Into<redb::Error>> From<E> for TxnError {
    fn from(e: E) -> Self {
        TxnError::Db(e.into())
    }
}

impl From<StoreError> for TxnError {
    fn from(e: StoreError) -> Self {
        TxnError::Store(e)
    }
}
