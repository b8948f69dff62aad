//! The on-disk spool: batches ClickHouse could not take (down, slow, or the sink is behind) wait
//! here as one segment file each until the replayer has inserted them. A segment is written to a
//! temporary name, fsync'd, renamed and the directory fsync'd, so it exists whole or not at all;
//! its header carries a SHA-256 of the payload so a damaged file is quarantined, never replayed
//! half-read. The directory is locked: two gateways sharing one spool would replay each other's
//! batches.

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const MAGIC: &str = "MBSPOOL1";

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    bytes: u64,
    next_seq: u64,
    /// seq → (path, size): oldest first.
    segments: BTreeMap<u64, (PathBuf, u64)>,
    _lock: File,
}

#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    /// Checksum, header or payload do not agree: the file must not be replayed.
    Corrupt(String),
}

pub struct Segment<R> {
    pub batch_id: String,
    pub rows: Vec<R>,
}

impl Spool {
    /// Opens (creating) the spool directory and takes its lock; lists what earlier runs left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = File::create(dir.join(".lock"))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "spool {} is locked by another process (each gateway needs its own spool_dir)",
                    dir.display()
                ),
            ));
        }
        let mut segments = BTreeMap::new();
        let mut bytes = 0;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                // A write that never completed: its batch was never acknowledged as spooled.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".seg")
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let len = entry.metadata()?.len();
            bytes += len;
            segments.insert(seq, (entry.path(), len));
        }
        let next_seq = segments.keys().next_back().map_or(1, |s| s + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            bytes,
            next_seq,
            segments,
            _lock: lock,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Durably writes one batch. Fails when the spool would exceed its limit.
    pub fn write<R: Serialize>(&mut self, batch_id: &str, rows: &[R]) -> io::Result<()> {
        let payload = serde_json::to_vec(rows).map_err(io::Error::other)?;
        let header = format!(
            "{MAGIC} {batch_id} {} {} {}\n",
            rows.len(),
            payload.len(),
            hex::encode(Sha256::digest(&payload))
        );
        let size = (header.len() + payload.len()) as u64;
        if self.bytes + size > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "spool {} full ({} of {} bytes)",
                    self.dir.display(),
                    self.bytes,
                    self.max_bytes
                ),
            ));
        }
        let seq = self.next_seq;
        let path = self.dir.join(format!("{seq:020}-{batch_id}.seg"));
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(header.as_bytes())?;
        f.write_all(&payload)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.next_seq += 1;
        self.bytes += size;
        self.segments.insert(seq, (path, size));
        Ok(())
    }

    /// The oldest segment waiting, if any.
    pub fn oldest(&self) -> Option<(u64, PathBuf)> {
        self.segments
            .iter()
            .next()
            .map(|(s, (p, _))| (*s, p.clone()))
    }

    /// Deletes a segment after its rows are in ClickHouse.
    pub fn remove(&mut self, seq: u64) -> io::Result<()> {
        if let Some((path, size)) = self.segments.remove(&seq) {
            self.bytes -= size;
            std::fs::remove_file(&path)?;
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Moves a damaged segment aside (kept for forensics) so replay can go on.
    pub fn quarantine(&mut self, seq: u64) -> io::Result<()> {
        if let Some((path, size)) = self.segments.remove(&seq) {
            self.bytes -= size;
            std::fs::rename(&path, path.with_extension("corrupt"))?;
        }
        Ok(())
    }
}

/// Reads and checks one segment.
pub fn read<R: DeserializeOwned>(path: &Path) -> Result<Segment<R>, ReadError> {
    let data = std::fs::read(path).map_err(ReadError::Io)?;
    let nl = memchr::memchr(b'\n', &data).ok_or_else(|| ReadError::Corrupt("no header".into()))?;
    let header = std::str::from_utf8(&data[..nl])
        .map_err(|_| ReadError::Corrupt("header not UTF-8".into()))?;
    let f: Vec<&str> = header.split(' ').collect();
    let [magic, batch_id, rows, len, sum] = f[..] else {
        return Err(ReadError::Corrupt(format!("bad header {header:?}")));
    };
    let payload = &data[nl + 1..];
    if magic != MAGIC
        || len.parse::<usize>().ok() != Some(payload.len())
        || hex::encode(Sha256::digest(payload)) != sum
    {
        return Err(ReadError::Corrupt("length or checksum mismatch".into()));
    }
    let parsed: Vec<R> =
        serde_json::from_slice(payload).map_err(|e| ReadError::Corrupt(e.to_string()))?;
    if rows.parse::<usize>().ok() != Some(parsed.len()) {
        return Err(ReadError::Corrupt("row count mismatch".into()));
    }
    Ok(Segment {
        batch_id: batch_id.to_string(),
        rows: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_order_limit_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 10_000).unwrap();
        s.write("b1", &[1u32, 2, 3]).unwrap();
        s.write("b2", &[4u32]).unwrap();
        assert_eq!(s.len(), 2);
        assert!(Spool::open(dir.path(), 10_000).is_err(), "lock held");
        let (seq, path) = s.oldest().unwrap();
        let seg: Segment<u32> = read(&path).unwrap();
        assert_eq!((seg.batch_id.as_str(), seg.rows), ("b1", vec![1, 2, 3]));
        s.remove(seq).unwrap();
        let big = vec![0u64; 5_000];
        assert!(s.write("b3", &big).is_err(), "over the limit");
        let (seq2, path2) = s.oldest().unwrap();
        let mut bytes = std::fs::read(&path2).unwrap();
        *bytes.last_mut().unwrap() = b'9';
        std::fs::write(&path2, bytes).unwrap();
        assert!(matches!(read::<u32>(&path2), Err(ReadError::Corrupt(_))));
        s.quarantine(seq2).unwrap();
        assert!(s.is_empty());
        drop(s);
        let reopened = Spool::open(dir.path(), 10_000).unwrap();
        assert!(reopened.is_empty(), "quarantined files are not replayed");
        assert_eq!(reopened.next_seq, 1);
    }
}
