//! Raft's durable storage: log entries, hard state, configuration and the latest snapshot in a
//! redb database under the data root. Every append is one redb transaction committed with
//! fsync, so an acknowledged write survives `kill -9`. The log since the last snapshot is also
//! kept in memory, which is what raft-rs reads.
//!
//! Entries and snapshots — which hold secrets, configs and registry credentials — are sealed
//! at rest with ChaCha20-Poly1305 under this manager's data key (`raft.key` beside the
//! database, mode 0600, as Swarm keeps its data key beside its log): the database alone, a
//! copy or a backup of it, shows none of them. Records written before sealing existed are
//! read as they are and sealed when next written.

use crate::seal::SealKey;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageFault {
    /// The database could not be opened or written.
    #[error("raft store {path}: {message}")]
    Db {
        /// Database file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The data key is sealed under an unlock key (autolock) and none was given.
    #[error(
        "this manager is locked: its data key {path} is sealed under the cluster's unlock key"
    )]
    Locked {
        /// Key file.
        path: PathBuf,
    },
    /// The unlock key given does not open the data key.
    #[error("the unlock key is not this cluster's")]
    WrongUnlockKey,
    /// The data key could not be read or made.
    #[error("raft data key {path}: {message}")]
    Key {
        /// Key file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A record did not decode (or did not open under this manager's data key).
    #[error("raft store {path}: corrupt record {key}")]
    Corrupt {
        /// Database file.
        path: PathBuf,
        /// Which record.
        key: String,
    },
}

#[derive(Debug, Default)]
struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    snapshot_data: Vec<u8>,
    /// Entries after the snapshot, in order.
    entries: Vec<Entry>,
    /// This manager's Raft id, once it belongs to a cluster.
    raft_id: Option<u64>,
    /// Configuration changes at or below this index are not applied again (set by
    /// `--force-new-cluster`, which replaces the voters with this manager alone).
    conf_floor: u64,
}

impl Core {
    fn first_index(&self) -> u64 {
        self.snapshot_meta.index + 1
    }
    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_meta.index, |e| e.index)
    }
}

/// What marks a sealed record: then a 12-byte nonce, then the ciphertext and its tag.
const SEALED: &[u8; 4] = b"SHL1";

/// What marks a data key file sealed under an unlock key: then a nonce and the sealed key.
const LOCKED_KEY: &[u8; 5] = b"SHLK1";

/// Seals and opens records with the manager's data key.
#[derive(Clone)]
struct Sealer {
    key: [u8; 32],
    cipher: SealKey,
}

/// True when the data key file at `path` is sealed under an unlock key.
pub fn key_is_locked(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(LOCKED_KEY))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("key.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Sealer {
    /// The key at `path` (opened with `unlock` when it is sealed), made (32 random bytes,
    /// mode 0600) when there is none.
    fn load_or_create(path: &Path, unlock: Option<&[u8; 32]>) -> Result<Sealer, StorageFault> {
        let fault = |message: String| StorageFault::Key {
            path: path.to_owned(),
            message,
        };
        let key: [u8; 32] = match std::fs::read(path) {
            Ok(bytes) if bytes.starts_with(LOCKED_KEY) => {
                let Some(kek) = unlock else {
                    return Err(StorageFault::Locked {
                        path: path.to_owned(),
                    });
                };
                SealKey::new(kek)
                    .open(&bytes[LOCKED_KEY.len()..])
                    .and_then(|k| <[u8; 32]>::try_from(k).ok())
                    .ok_or(StorageFault::WrongUnlockKey)?
            }
            Ok(bytes) => bytes
                .try_into()
                .map_err(|_| fault("not a 32-byte key".into()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_private(path, &key).map_err(|e| fault(e.to_string()))?;
                key
            }
            Err(e) => return Err(fault(e.to_string())),
        };
        Ok(Sealer {
            key,
            cipher: SealKey::new(&key),
        })
    }

    /// Writes the key to `path`: sealed under `unlock` (autolock), or as it is.
    fn write_key(&self, path: &Path, unlock: Option<&[u8; 32]>) -> Result<(), StorageFault> {
        let bytes = match unlock {
            Some(kek) => [LOCKED_KEY.as_slice(), &SealKey::new(kek).seal(&self.key)].concat(),
            None => self.key.to_vec(),
        };
        write_private(path, &bytes).map_err(|e| StorageFault::Key {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn seal(&self, plain: &[u8]) -> Vec<u8> {
        [SEALED.as_slice(), &self.cipher.seal(plain)].concat()
    }

    /// The plain record; `None` when it is sealed but does not open under this key.
    fn open<'a>(&self, record: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        match record.strip_prefix(SEALED.as_slice()) {
            Some(rest) => self.cipher.open(rest).map(Cow::Owned),
            // Written before records were sealed.
            None => Some(Cow::Borrowed(record)),
        }
    }
}

/// The durable log. Cheap to clone (shared).
#[derive(Clone)]
pub struct DurableLog {
    db: Arc<Database>,
    path: PathBuf,
    core: Arc<RwLock<Core>>,
    sealer: Sealer,
}

impl std::fmt::Debug for DurableLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLog")
            .field("path", &self.path)
            .finish()
    }
}

fn db_err(path: &Path, e: impl std::fmt::Display) -> StorageFault {
    StorageFault::Db {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

impl DurableLog {
    /// Opens (or creates) the log at `path`; fails with [`StorageFault::Locked`] when its data
    /// key is sealed under an unlock key.
    pub fn open(path: &Path) -> Result<DurableLog, StorageFault> {
        Self::open_with(path, None)
    }

    /// Opens the log at `path` whose data key may be sealed under `unlock` (autolock).
    pub fn open_with(path: &Path, unlock: Option<&[u8; 32]>) -> Result<DurableLog, StorageFault> {
        let sealer = Sealer::load_or_create(&path.with_extension("key"), unlock)?;
        let db = Database::create(path).map_err(|e| db_err(path, e))?;
        let mut core = Core::default();
        {
            let txn = db.begin_write().map_err(|e| db_err(path, e))?;
            txn.open_table(ENTRIES).map_err(|e| db_err(path, e))?;
            txn.open_table(META).map_err(|e| db_err(path, e))?;
            txn.commit().map_err(|e| db_err(path, e))?;
        }
        let txn = db.begin_read().map_err(|e| db_err(path, e))?;
        let meta = txn.open_table(META).map_err(|e| db_err(path, e))?;
        let corrupt = |key: &str| StorageFault::Corrupt {
            path: path.to_owned(),
            key: key.to_owned(),
        };
        if let Some(v) = meta.get("hard_state").map_err(|e| db_err(path, e))? {
            core.hard_state =
                HardState::parse_from_bytes(v.value()).map_err(|_| corrupt("hard_state"))?;
        }
        if let Some(v) = meta.get("conf_state").map_err(|e| db_err(path, e))? {
            core.conf_state =
                ConfState::parse_from_bytes(v.value()).map_err(|_| corrupt("conf_state"))?;
        }
        if let Some(v) = meta.get("snapshot_meta").map_err(|e| db_err(path, e))? {
            core.snapshot_meta = SnapshotMetadata::parse_from_bytes(v.value())
                .map_err(|_| corrupt("snapshot_meta"))?;
        }
        if let Some(v) = meta.get("snapshot_data").map_err(|e| db_err(path, e))? {
            core.snapshot_data = sealer
                .open(v.value())
                .ok_or_else(|| corrupt("snapshot_data"))?
                .into_owned();
        }
        let read_u64 = |key: &str| -> Result<Option<u64>, StorageFault> {
            match meta.get(key).map_err(|e| db_err(path, e))? {
                Some(v) => {
                    let bytes: [u8; 8] = v.value().try_into().map_err(|_| corrupt(key))?;
                    Ok(Some(u64::from_be_bytes(bytes)))
                }
                None => Ok(None),
            }
        };
        core.raft_id = read_u64("raft_id")?;
        // A commit index written without fsync may have been lost; what a snapshot holds was
        // committed.
        core.hard_state.commit = core.hard_state.commit.max(core.snapshot_meta.index);
        core.conf_floor = read_u64("conf_floor")?.unwrap_or(0);
        let entries = txn.open_table(ENTRIES).map_err(|e| db_err(path, e))?;
        for row in entries
            .range(core.snapshot_meta.index + 1..)
            .map_err(|e| db_err(path, e))?
        {
            let (k, v) = row.map_err(|e| db_err(path, e))?;
            let entry = sealer
                .open(v.value())
                .and_then(|plain| Entry::parse_from_bytes(&plain).ok())
                .ok_or_else(|| corrupt(&format!("entry {}", k.value())))?;
            core.entries.push(entry);
        }
        drop(entries);
        drop(meta);
        drop(txn);
        Ok(DurableLog {
            db: Arc::new(db),
            path: path.to_owned(),
            core: Arc::new(RwLock::new(core)),
            sealer,
        })
    }

    /// Rewrites the data key file: sealed under `unlock` (autolock on), or plain (off).
    pub fn seal_key(&self, unlock: Option<&[u8; 32]>) -> Result<(), StorageFault> {
        self.sealer
            .write_key(&self.path.with_extension("key"), unlock)
    }

    /// True once the log belongs to a cluster: it has a Raft id (given at `cluster init` or
    /// `cluster join`) or a voter configuration (logs written before ids were stored).
    pub fn is_initialized(&self) -> bool {
        let core = self.core.read().expect("raft core lock");
        core.raft_id.is_some() || !core.conf_state.voters.is_empty()
    }

    /// This manager's Raft id (1 for a log written before ids were stored).
    pub fn raft_id(&self) -> u64 {
        self.core
            .read()
            .expect("raft core lock")
            .raft_id
            .unwrap_or(1)
    }

    /// Index at or below which configuration changes are not applied again.
    pub fn conf_floor(&self) -> u64 {
        self.core.read().expect("raft core lock").conf_floor
    }

    /// Records this manager's Raft id: the log now belongs to a cluster, and a joining manager
    /// that restarts before it has heard from the leader still knows who it is.
    pub fn set_raft_id(&self, id: u64) -> Result<(), StorageFault> {
        let txn = self.begin()?;
        {
            let mut t = txn.open_table(META).map_err(|e| db_err(&self.path, e))?;
            self.put(&mut t, "raft_id", &id.to_be_bytes())?;
        }
        txn.commit().map_err(|e| db_err(&self.path, e))?;
        self.core.write().expect("raft core lock").raft_id = Some(id);
        Ok(())
    }

    /// `--force-new-cluster`: this manager becomes the only voter. Every entry already in the
    /// log stays (it is committed by the new one-voter majority); configuration changes up to
    /// the current last index are not applied again when the log is replayed.
    pub fn force_single_voter(&self) -> Result<(), StorageFault> {
        let id = self.raft_id();
        let floor = self.core.read().expect("raft core lock").last_index();
        self.set_voters(
            ConfState {
                voters: vec![id],
                ..Default::default()
            },
            ("conf_floor", floor),
        )?;
        self.core.write().expect("raft core lock").conf_floor = floor;
        Ok(())
    }

    /// Replaces the voter configuration, in the log's own record and in its snapshot's
    /// metadata, together with one more number (`raft_id`, `conf_floor`), in one transaction.
    fn set_voters(&self, cs: ConfState, extra: (&str, u64)) -> Result<(), StorageFault> {
        let mut meta = self
            .core
            .read()
            .expect("raft core lock")
            .snapshot_meta
            .clone();
        meta.set_conf_state(cs.clone());
        let txn = self.begin()?;
        {
            let mut t = txn.open_table(META).map_err(|e| db_err(&self.path, e))?;
            self.put(&mut t, "conf_state", &cs.write_to_bytes().expect("encode"))?;
            self.put(
                &mut t,
                "snapshot_meta",
                &meta.write_to_bytes().expect("encode"),
            )?;
            self.put(&mut t, extra.0, &extra.1.to_be_bytes())?;
        }
        txn.commit().map_err(|e| db_err(&self.path, e))?;
        let mut core = self.core.write().expect("raft core lock");
        core.conf_state = cs;
        core.snapshot_meta = meta;
        Ok(())
    }

    /// Makes a fresh log the first log of a cluster whose only voter is `id`.
    pub fn bootstrap(&self, id: u64) -> Result<(), StorageFault> {
        self.set_voters(
            ConfState {
                voters: vec![id],
                ..Default::default()
            },
            ("raft_id", id),
        )?;
        self.core.write().expect("raft core lock").raft_id = Some(id);
        Ok(())
    }

    fn begin(&self) -> Result<redb::WriteTransaction, StorageFault> {
        self.begin_with(Durability::Immediate)
    }

    fn begin_with(&self, durability: Durability) -> Result<redb::WriteTransaction, StorageFault> {
        let mut txn = self.db.begin_write().map_err(|e| db_err(&self.path, e))?;
        txn.set_durability(durability);
        Ok(txn)
    }

    fn put(
        &self,
        t: &mut redb::Table<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageFault> {
        t.insert(key, value).map_err(|e| db_err(&self.path, e))?;
        Ok(())
    }

    /// Appends entries (replacing any conflicting tail) and records the hard state, durably, in
    /// one transaction.
    pub fn append(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageFault> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let (last, commit_only) = {
            let core = self.core.read().expect("raft core lock");
            let commit_only = entries.is_empty()
                && hard_state.is_some_and(|hs| {
                    hs.term == core.hard_state.term && hs.vote == core.hard_state.vote
                });
            (core.last_index(), commit_only)
        };
        // Entries, terms and votes are fsynced before anything depends on them. A commit index
        // alone is not: it can be learnt again from the leader, so it rides along with the next
        // durable write (a crash loses at most its advance, never an acknowledged entry).
        let txn = if commit_only {
            self.begin_with(Durability::None)?
        } else {
            self.begin()?
        };
        {
            let mut t = txn.open_table(ENTRIES).map_err(|e| db_err(&self.path, e))?;
            if let Some(first) = entries.first() {
                for idx in first.index..=last {
                    t.remove(idx).map_err(|e| db_err(&self.path, e))?;
                }
            }
            for e in entries {
                let sealed = self.sealer.seal(&e.write_to_bytes().expect("encode"));
                t.insert(e.index, sealed.as_slice())
                    .map_err(|e| db_err(&self.path, e))?;
            }
            if let Some(hs) = hard_state {
                let mut m = txn.open_table(META).map_err(|e| db_err(&self.path, e))?;
                self.put(&mut m, "hard_state", &hs.write_to_bytes().expect("encode"))?;
            }
        }
        txn.commit().map_err(|e| db_err(&self.path, e))?;
        let mut core = self.core.write().expect("raft core lock");
        if let Some(first) = entries.first() {
            // Entries are contiguous: those before `first` are a prefix, found without a scan.
            let keep = core.entries.partition_point(|e| e.index < first.index);
            core.entries.truncate(keep);
            core.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hard_state {
            core.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Records a new commit index (with the rest of the hard state) durably.
    pub fn set_commit(&self, commit: u64) -> Result<(), StorageFault> {
        let mut hs = self.core.read().expect("raft core lock").hard_state.clone();
        if hs.commit >= commit {
            return Ok(());
        }
        hs.commit = commit;
        self.append(&[], Some(&hs))
    }

    /// Records a new voter configuration.
    pub fn set_conf_state(&self, cs: ConfState) -> Result<(), StorageFault> {
        let txn = self.begin()?;
        {
            let mut t = txn.open_table(META).map_err(|e| db_err(&self.path, e))?;
            self.put(&mut t, "conf_state", &cs.write_to_bytes().expect("encode"))?;
        }
        txn.commit().map_err(|e| db_err(&self.path, e))?;
        self.core.write().expect("raft core lock").conf_state = cs;
        Ok(())
    }

    /// Stores a snapshot of the state at `index` and drops the log up to it.
    pub fn compact(&self, index: u64, data: Vec<u8>) -> Result<(), StorageFault> {
        let (meta, first) = {
            let core = self.core.read().expect("raft core lock");
            if index <= core.snapshot_meta.index || index > core.last_index() {
                return Ok(());
            }
            let term = core
                .entries
                .iter()
                .find(|e| e.index == index)
                .map(|e| e.term)
                .unwrap_or(core.snapshot_meta.term);
            let mut meta = SnapshotMetadata {
                index,
                term,
                ..Default::default()
            };
            meta.set_conf_state(core.conf_state.clone());
            (meta, core.first_index())
        };
        let txn = self.begin()?;
        {
            let mut m = txn.open_table(META).map_err(|e| db_err(&self.path, e))?;
            self.put(
                &mut m,
                "snapshot_meta",
                &meta.write_to_bytes().expect("encode"),
            )?;
            self.put(&mut m, "snapshot_data", &self.sealer.seal(&data))?;
            let mut t = txn.open_table(ENTRIES).map_err(|e| db_err(&self.path, e))?;
            for idx in first..=index {
                t.remove(idx).map_err(|e| db_err(&self.path, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(&self.path, e))?;
        let mut core = self.core.write().expect("raft core lock");
        core.entries.retain(|e| e.index > index);
        core.snapshot_meta = meta;
        core.snapshot_data = data;
        Ok(())
    }

    /// Replaces everything with a snapshot received from the leader.
    pub fn install_snapshot(&self, snap: &Snapshot) -> Result<(), StorageFault> {
        let meta = snap.get_metadata().clone();
        let txn = self.begin()?;
        {
            let mut m = txn.open_table(META).map_err(|e| db_err(&self.path, e))?;
            self.put(
                &mut m,
                "snapshot_meta",
                &meta.write_to_bytes().expect("encode"),
            )?;
            self.put(&mut m, "snapshot_data", &self.sealer.seal(snap.get_data()))?;
            self.put(
                &mut m,
                "conf_state",
                &meta.get_conf_state().write_to_bytes().expect("encode"),
            )?;
            let mut t = txn.open_table(ENTRIES).map_err(|e| db_err(&self.path, e))?;
            let keys: Vec<u64> = t
                .iter()
                .map_err(|e| db_err(&self.path, e))?
                .filter_map(|r| r.ok().map(|(k, _)| k.value()))
                .collect();
            for k in keys {
                t.remove(k).map_err(|e| db_err(&self.path, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(&self.path, e))?;
        let mut core = self.core.write().expect("raft core lock");
        core.entries.clear();
        core.conf_state = meta.get_conf_state().clone();
        core.hard_state.commit = core.hard_state.commit.max(meta.index);
        core.snapshot_meta = meta;
        core.snapshot_data = snap.get_data().to_vec();
        Ok(())
    }

    /// The latest snapshot's index and data (empty data for none).
    pub fn snapshot_data(&self) -> (u64, Vec<u8>) {
        let core = self.core.read().expect("raft core lock");
        (core.snapshot_meta.index, core.snapshot_data.clone())
    }

    /// Entries in the log (after the snapshot).
    pub fn len(&self) -> u64 {
        self.core.read().expect("raft core lock").entries.len() as u64
    }

    /// True when the log holds no entries after the snapshot.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl raft::Storage for DurableLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.core.read().expect("raft core lock");
        Ok(RaftState {
            hard_state: core.hard_state.clone(),
            conf_state: core.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.core.read().expect("raft core lock");
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = core.first_index();
        let mut out = core.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.core.read().expect("raft core lock");
        if idx == core.snapshot_meta.index {
            return Ok(core.snapshot_meta.term);
        }
        if idx < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().expect("raft core lock").first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().expect("raft core lock").last_index())
    }

    fn snapshot(&self, _request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let core = self.core.read().expect("raft core lock");
        let conf = core.snapshot_meta.get_conf_state();
        if !conf.voters.contains(&to) && !conf.learners.contains(&to) {
            // Taken before `to` joined: it would refuse it. The leader snapshots again once
            // the change that added it applies; raft-rs asks again later.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(core.snapshot_meta.clone());
        snap.set_data(core.snapshot_data.clone().into());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn survives_reopen_and_truncates_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let log = DurableLog::open(&path).unwrap();
        log.bootstrap(1).unwrap();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .unwrap();
        log.append(
            &[entry(3, 2)],
            Some(&HardState {
                term: 2,
                commit: 2,
                ..Default::default()
            }),
        )
        .unwrap();
        drop(log);
        let log = DurableLog::open(&path).unwrap();
        assert!(log.is_initialized());
        assert_eq!(log.last_index().unwrap(), 3);
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.initial_state().unwrap().hard_state.commit, 2);
        log.compact(2, b"state".to_vec()).unwrap();
        drop(log);
        let log = DurableLog::open(&path).unwrap();
        assert_eq!(log.first_index().unwrap(), 3);
        assert_eq!(log.term(2).unwrap(), 1);
        assert!(log
            .entries(1, 3, None, GetEntriesContext::empty(false))
            .is_err());
        assert_eq!(log.snapshot_data(), (2, b"state".to_vec()));
    }

    #[test]
    fn entries_and_snapshots_are_sealed_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let secret = b"hunter2-the-database-password";
        let log = DurableLog::open(&path).unwrap();
        log.bootstrap(1).unwrap();
        let mut e = entry(1, 1);
        e.data = secret.to_vec().into();
        log.append(&[e, entry(2, 1), entry(3, 1)], None).unwrap();
        log.compact(2, [b"snap:".as_slice(), secret].concat())
            .unwrap();
        drop(log);
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        let files: Vec<Vec<u8>> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|f| std::fs::read(f.unwrap().path()).unwrap())
            .collect();
        assert!(
            files.iter().all(|f| !contains(f, secret)),
            "a secret in the data root"
        );
        assert!(
            files.iter().all(|f| !contains(f, b"e3")),
            "an entry in the clear"
        );
        let key = dir.path().join("raft.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // The same key opens them again...
        let log = DurableLog::open(&path).unwrap();
        assert_eq!(
            log.snapshot_data().1,
            [b"snap:".as_slice(), secret].concat()
        );
        let got = log
            .entries(3, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(&got[0].data[..], b"e3");
        drop(log);
        // ...another key does not.
        std::fs::write(&key, [7u8; 32]).unwrap();
        let err = DurableLog::open(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt record"), "{err}");
    }

    #[test]
    fn an_autolocked_key_needs_the_unlock_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let log = DurableLog::open(&path).unwrap();
        log.bootstrap(1).unwrap();
        log.append(&[entry(1, 1)], None).unwrap();
        let kek = [9u8; 32];
        log.seal_key(Some(&kek)).unwrap();
        drop(log);
        assert!(key_is_locked(&dir.path().join("raft.key")));
        assert!(matches!(
            DurableLog::open(&path),
            Err(StorageFault::Locked { .. })
        ));
        assert!(matches!(
            DurableLog::open_with(&path, Some(&[1u8; 32])),
            Err(StorageFault::WrongUnlockKey)
        ));
        let log = DurableLog::open_with(&path, Some(&kek)).unwrap();
        assert_eq!(log.last_index().unwrap(), 1);
        log.seal_key(None).unwrap();
        drop(log);
        assert!(!key_is_locked(&dir.path().join("raft.key")));
        assert_eq!(DurableLog::open(&path).unwrap().last_index().unwrap(), 1);
    }
}
