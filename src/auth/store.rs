//! Durable key store behind a trait: the control store implements it (`crate::control`); the
//! JSON file store here is what older versions kept keys in, read once to import them. The embedded store keeps every record in memory
//! (reads are lock-free snapshots, never disk) and persists each change by writing the whole
//! set to a temp file, fsync, rename, fsync of the directory: a crash leaves the old or the new
//! file, never a torn one.

use super::keys::KeyRecord;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The records of `map` (of one org, or all), ordered by id: what `KeyStore::list` answers.
pub fn sorted(map: &HashMap<String, Arc<KeyRecord>>, org: Option<&str>) -> Vec<Arc<KeyRecord>> {
    let mut v: Vec<_> = map
        .values()
        .filter(|k| org.is_none_or(|o| k.org == o))
        .cloned()
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

pub trait KeyStore: Send + Sync {
    /// The record of key `id` (hot path: must not block on I/O).
    fn get(&self, id: &str) -> Option<Arc<KeyRecord>>;
    /// All records, optionally of one org, ordered by id.
    fn list(&self, org: Option<&str>) -> Vec<Arc<KeyRecord>>;
    /// Adds a record; fails if the id exists.
    fn insert(&self, record: KeyRecord) -> std::io::Result<()>;
    /// Marks a key revoked at `at`; returns the updated record.
    fn revoke(&self, id: &str, at: u64) -> std::io::Result<Option<Arc<KeyRecord>>>;
}

/// The key store a process runs with: the control store (`[control]`; by default an embedded
/// SQLite file beside `auth.key_store`, which it imports once and retires).
pub type Keys = crate::control::ControlKeys;

#[derive(Serialize, Deserialize, Default)]
struct FileFormat {
    version: u32,
    keys: Vec<KeyRecord>,
}

/// Identity of one version of the store file: it is only ever replaced whole (rename), so
/// inode, size and mtime tell versions apart without reading it.
type FileVersion = Option<(u64, u64, std::time::SystemTime)>;

fn file_version(path: &Path) -> FileVersion {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.len(), meta.modified().ok()?))
}

pub struct FileKeyStore {
    path: PathBuf,
    /// The file version the in-memory map was read from or written as.
    loaded: Mutex<FileVersion>,
    map: ArcSwap<HashMap<String, Arc<KeyRecord>>>,
    /// Serializes writers; readers never take it.
    write: Mutex<()>,
}

impl FileKeyStore {
    /// Opens (or starts) the store at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let version = file_version(path);
        let map = Self::read_file(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            loaded: Mutex::new(version),
            map: ArcSwap::from_pointee(map),
            write: Mutex::new(()),
        })
    }

    fn persist(&self, map: &HashMap<String, Arc<KeyRecord>>) -> std::io::Result<()> {
        let mut keys: Vec<KeyRecord> = map.values().map(|k| (**k).clone()).collect();
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        let bytes = serde_json::to_vec_pretty(&FileFormat { version: 1, keys })?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    fn read_file(path: &Path) -> std::io::Result<HashMap<String, Arc<KeyRecord>>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let f: FileFormat = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Ok(f.keys
                    .into_iter()
                    .map(|k| (k.id.clone(), Arc::new(k)))
                    .collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
            Err(e) => Err(e),
        }
    }

    /// Re-reads the file if another process (such as `model-bridge keys`) replaced it since it
    /// was last read or written here.
    pub fn refresh_if_changed(&self) -> std::io::Result<()> {
        let version = file_version(&self.path);
        {
            let loaded = self
                .loaded
                .lock()
                .map_err(|_| std::io::Error::other("key store poisoned"))?;
            if *loaded == version {
                return Ok(());
            }
        }
        let _w = self
            .write
            .lock()
            .map_err(|_| std::io::Error::other("key store writer poisoned"))?;
        // The version is taken before reading: a replacement during the read shows up as a
        // newer version on the next check.
        let map = Self::read_file(&self.path)?;
        self.map.store(Arc::new(map));
        if let Ok(mut l) = self.loaded.lock() {
            *l = version;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read-modify-write under an exclusive lock on `<file>.lock`, starting from the file on
    /// disk, so writers in several processes (gateway, CLI) never lose each other's changes.
    fn change(
        &self,
        f: impl FnOnce(&mut HashMap<String, Arc<KeyRecord>>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let _w = self
            .write
            .lock()
            .map_err(|_| std::io::Error::other("key store writer poisoned"))?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))?;
        let _flock = FileLock::exclusive(&lock)?;
        let mut next = Self::read_file(&self.path)?;
        f(&mut next)?;
        self.persist(&next)?;
        self.map.store(Arc::new(next));
        if let Ok(mut l) = self.loaded.lock() {
            *l = file_version(&self.path);
        }
        Ok(())
    }
}

/// An exclusive `flock`, released on drop.
struct FileLock(i32);

impl FileLock {
    fn exclusive(f: &std::fs::File) -> std::io::Result<Self> {
        use std::os::unix::io::AsRawFd;
        let fd = f.as_raw_fd();
        // SAFETY: flock on a file descriptor owned by `f`, which outlives the lock guard.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(fd))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking the descriptor locked in `exclusive`.
        unsafe {
            libc::flock(self.0, libc::LOCK_UN);
        }
    }
}

impl KeyStore for FileKeyStore {
    fn get(&self, id: &str) -> Option<Arc<KeyRecord>> {
        self.map.load().get(id).cloned()
    }

    fn list(&self, org: Option<&str>) -> Vec<Arc<KeyRecord>> {
        sorted(&self.map.load(), org)
    }

    fn insert(&self, record: KeyRecord) -> std::io::Result<()> {
        self.change(|m| {
            if m.contains_key(&record.id) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "key id exists",
                ));
            }
            m.insert(record.id.clone(), Arc::new(record));
            Ok(())
        })
    }

    fn revoke(&self, id: &str, at: u64) -> std::io::Result<Option<Arc<KeyRecord>>> {
        let mut out = None;
        self.change(|m| {
            if let Some(k) = m.get(id) {
                let mut k = (**k).clone();
                k.revoked_at.get_or_insert(at);
                let k = Arc::new(k);
                m.insert(id.to_string(), k.clone());
                out = Some(k);
            }
            Ok(())
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, org: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            hash: "00".repeat(32),
            name: None,
            org: org.into(),
            team: None,
            user: None,
            roles: vec!["developer".into()],
            cost_center: None,
            models: None,
            created_at: 1,
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn survives_reopen_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.json");
        let s = FileKeyStore::open(&p).unwrap();
        s.insert(rec("a", "o1")).unwrap();
        s.insert(rec("b", "o2")).unwrap();
        assert!(s.insert(rec("a", "o1")).is_err());
        s.revoke("a", 7).unwrap();
        let s2 = FileKeyStore::open(&p).unwrap();
        assert_eq!(s2.get("a").unwrap().revoked_at, Some(7));
        assert_eq!(s2.list(Some("o2")).len(), 1);
        assert_eq!(s2.list(None).len(), 2);
        assert!(!p.with_extension("tmp").exists());
    }
}
