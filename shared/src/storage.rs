//! Where proof files live. The API streams an upload into a staging file
//! and places it into the store only once the upload is accepted; the
//! `proof_validation` job reads it back through [`ProofStore`], and the
//! retention job deletes what no proof references. An object store can
//! replace the local directory without touching any of them.
//! [`LocalDirStore`] is the default: one file per key under a root
//! directory taken from the configuration.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::Error;

/// Where uploads in progress are staged, under the store's root.
pub const STAGING_DIR: &str = ".incoming";

/// Bytes by key. Keys are relative paths made of `[A-Za-z0-9._/-]`; an
/// implementation refuses anything else so a key can never name a file
/// outside its store. `put` of an existing key replaces it (a retried upload
/// writes the same bytes again).
pub trait ProofStore: Send + Sync {
    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), Error>>;
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, Error>>;
    /// A new staging file for an upload in progress (see [`StagedFile`]).
    fn stage(&self) -> BoxFuture<'_, Result<StagedFile, Error>>;
    /// Moves a finished staging file into the store under `key`. Placing
    /// again (a retried transaction) is harmless.
    fn place<'a>(&'a self, staged: &'a StagedFile, key: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Keys of the stored files last written before `cutoff`, staging files
    /// left by a crash included (no proof ever references those).
    fn written_before(&self, cutoff: SystemTime) -> BoxFuture<'_, Result<Vec<String>, Error>>;
    /// Deletes a stored file; `false` when it was already gone.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>>;
}

/// An upload in progress: the bytes stream into a file of the store's own
/// staging directory (one file system, so placing it is a rename) while
/// their SHA-256 is computed. Dropped, it deletes its file: a refused
/// upload, an error half-way or a client that went away leave nothing
/// behind. Once placed, the file has moved and the drop finds nothing.
pub struct StagedFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha256,
    len: u64,
    sha256: Option<String>,
}

impl StagedFile {
    async fn create_in(dir: PathBuf) -> Result<StagedFile, Error> {
        let dir = dir.as_path();
        let io = |e: std::io::Error| Error::internal(format!("storage staging in {}: {e}", dir.display()));
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let path = dir.join(uuid::Uuid::new_v4().simple().to_string());
        let file = tokio::fs::File::create_new(&path).await.map_err(io)?;
        Ok(StagedFile { path, file: Some(file), hasher: Sha256::new(), len: 0, sha256: None })
    }

    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let Some(file) = self.file.as_mut() else {
            return Err(Error::internal("write to a finished staging file"));
        };
        file.write_all(chunk).await.map_err(|e| Error::internal(format!("storage staging write: {e}")))?;
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Flushes the bytes to disk and answers their SHA-256 (lower-case hex).
    pub async fn finish(&mut self) -> Result<String, Error> {
        if let Some(mut file) = self.file.take() {
            let synced = async {
                file.flush().await?;
                // On disk before any rename, or a power cut could leave the
                // stored name pointing at empty blocks.
                file.sync_all().await
            };
            synced.await.map_err(|e| Error::internal(format!("storage staging sync: {e}")))?;
            self.sha256 = Some(hex::encode(std::mem::take(&mut self.hasher).finalize()));
        }
        self.sha256.clone().ok_or_else(|| Error::internal("staging file not finished"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        // One unlink, cheap enough to run where the drop happens.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A [`ProofStore`] on the local file system.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// A store under `root`; the directory is created on the first `put`,
    /// so a fresh deployment needs no setup step. The root is logged: it is
    /// the one place proof files live.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        tracing::info!(root = %root.display(), "proof store");
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, Error> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Refuses keys that could leave the root or that the file system would
/// read differently from what was written: empty, absolute, `..`, empty or
/// `.` segments, a trailing `/`, or any character outside `[A-Za-z0-9._/-]`.
/// Keys are made by our own code, so a bad key is a bug: an internal error.
pub fn check_key(key: &str) -> Result<(), Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-');
    let valid = !key.is_empty()
        && key.len() <= 512
        && key.chars().all(allowed)
        && !key.starts_with('/')
        && !key.contains("..")
        && key.split('/').all(|segment| !segment.is_empty() && segment != ".");
    if valid { Ok(()) } else { Err(Error::internal(format!("invalid storage key {key:?}"))) }
}

impl ProofStore for LocalDirStore {
    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let path = self.path_of(key)?;
            let io =
                |what: &'static str| move |e: std::io::Error| Error::internal(format!("storage {what} {key}: {e}"));
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            tokio::fs::create_dir_all(&dir).await.map_err(io("mkdir"))?;
            // The temporary file sits beside the target (a rename is atomic
            // only within one file system) under a name no reader asks for:
            // a crash leaves at worst a stray temporary, never a half proof.
            let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let temp = dir.join(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4()));
            let written = async {
                let mut file = tokio::fs::File::create(&temp).await?;
                file.write_all(bytes).await?;
                // Flushed to disk before the rename, or a power cut could
                // leave the new name pointing at empty blocks.
                file.sync_all().await?;
                drop(file);
                tokio::fs::rename(&temp, &path).await
            }
            .await;
            if let Err(e) = written {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(io("write")(e));
            }
            // The rename itself is durable once the directory is synced.
            sync_dir(dir).await.map_err(io("sync"))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        Box::pin(async move {
            let path = self.path_of(key)?;
            tokio::fs::read(&path).await.map_err(|e| Error::internal(format!("storage read {key}: {e}")))
        })
    }

    fn stage(&self) -> BoxFuture<'_, Result<StagedFile, Error>> {
        Box::pin(StagedFile::create_in(self.root.join(STAGING_DIR)))
    }

    fn place<'a>(&'a self, staged: &'a StagedFile, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if staged.sha256.is_none() {
                return Err(Error::internal("place of an unfinished staging file"));
            }
            let path = self.path_of(key)?;
            let io =
                |what: &'static str| move |e: std::io::Error| Error::internal(format!("storage {what} {key}: {e}"));
            let dir = path.parent().unwrap_or(&self.root).to_path_buf();
            tokio::fs::create_dir_all(&dir).await.map_err(io("mkdir"))?;
            match tokio::fs::rename(&staged.path, &path).await {
                Ok(()) => {}
                // Placed by an earlier try of the same transaction: the file
                // is there, made fresh so retention sees it as new.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && tokio::fs::try_exists(&path).await.unwrap_or(false) =>
                {
                    let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(io("touch"))?;
                    file.set_modified(SystemTime::now()).map_err(io("touch"))?;
                }
                Err(e) => return Err(io("place")(e)),
            }
            sync_dir(dir).await.map_err(io("sync"))
        })
    }

    fn written_before(&self, cutoff: SystemTime) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        let root = self.root.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || files_written_before(&root, cutoff))
                .await
                .map_err(Error::internal)?
                .map_err(|e| Error::internal(format!("storage listing: {e}")))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let path = self.path_of(key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::internal(format!("storage delete {key}: {e}"))),
            }
        })
    }
}

/// Every regular file under `root` last modified before `cutoff`, as keys
/// (relative paths with `/`). A missing root is an empty store.
fn files_written_before(root: &Path, cutoff: SystemTime) -> std::io::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && entry.metadata()?.modified()? < cutoff {
                let path = entry.path();
                let Ok(relative) = path.strip_prefix(root) else { continue };
                let key = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                if check_key(&key).is_ok() {
                    keys.push(key);
                }
            }
        }
    }
    keys.sort();
    Ok(keys)
}

#[cfg(unix)]
async fn sync_dir(dir: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all()).await.map_err(std::io::Error::other)?
}

// Directories cannot be opened for syncing on other systems; the rename is
// still atomic there, only its durability across a power cut is weaker.
#[cfg(not(unix))]
async fn sync_dir(_dir: PathBuf) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("kobatela-store-{}", uuid::Uuid::new_v4())))
        }
    }

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("readable dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path.to_string_lossy().into_owned());
            }
        }
        out
    }

    #[tokio::test]
    async fn bytes_put_under_a_nested_key_come_back_unchanged() {
        let root = TempRoot::new();
        let store = LocalDirStore::new(&root.0);
        let bytes: Vec<u8> = (0..=255).collect();
        store.put("proofs/ab/cd/0123-photo.jpg", &bytes).await.expect("put");
        assert_eq!(store.get("proofs/ab/cd/0123-photo.jpg").await.expect("get"), bytes);
        assert!(root.0.join("proofs/ab/cd/0123-photo.jpg").is_file());
    }

    #[tokio::test]
    async fn a_put_leaves_no_temporary_file_behind_and_replaces_the_old_bytes() {
        let root = TempRoot::new();
        let store = LocalDirStore::new(&root.0);
        store.put("a/x.bin", b"first").await.expect("put");
        store.put("a/x.bin", b"second").await.expect("put again");
        store.put("a/empty", b"").await.expect("empty put");
        assert_eq!(store.get("a/x.bin").await.expect("get"), b"second");
        assert_eq!(store.get("a/empty").await.expect("get"), b"");
        let mut files = files_under(&root.0);
        files.sort();
        let expected: Vec<String> =
            ["a/empty", "a/x.bin"].iter().map(|k| root.0.join(k).to_string_lossy().into_owned()).collect();
        assert_eq!(files, expected);
    }

    #[tokio::test]
    async fn a_missing_key_is_an_error_not_empty_bytes() {
        let root = TempRoot::new();
        let store = LocalDirStore::new(&root.0);
        assert!(matches!(store.get("nothing/here").await, Err(Error::Internal(_))));
    }

    #[tokio::test]
    async fn keys_that_could_escape_the_root_or_are_malformed_are_refused() {
        let root = TempRoot::new();
        let store = LocalDirStore::new(root.0.join("inner"));
        let bad = [
            "",
            "/etc/passwd",
            "../outside",
            "a/../../outside",
            "a/..",
            "..",
            "a..b",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a\\b",
            "a b",
            "ä",
            "a\0b",
            "a:b",
            "~/x",
            "a?b",
            "%2e%2e/x",
        ];
        for key in bad {
            assert!(matches!(store.put(key, b"x").await, Err(Error::Internal(_))), "put {key:?}");
            assert!(matches!(store.get(key).await, Err(Error::Internal(_))), "get {key:?}");
        }
        assert!(check_key(&"a".repeat(513)).is_err());
        assert!(!root.0.exists() || files_under(&root.0).is_empty(), "nothing was written");
        for good in ["a", "A-z_0.9", "proofs/2030/05/17/0190c2d4-1b2a-7e3c.jpg", ".hidden/x", "a.b/c"] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
    }

    #[tokio::test]
    async fn the_store_works_behind_the_trait_from_parallel_tasks() {
        let root = TempRoot::new();
        let store: Arc<dyn ProofStore> = Arc::new(LocalDirStore::new(&root.0));
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    // Everyone writes the same key too: the last rename wins
                    // whole, no reader sees a mix.
                    let body = vec![i as u8; 4096];
                    store.put(&format!("p/{i}"), &body).await?;
                    store.put("p/shared", &body).await?;
                    Ok::<_, Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("put");
        }
        for i in 0..16u8 {
            assert_eq!(store.get(&format!("p/{i}")).await.expect("get"), vec![i; 4096]);
        }
        let shared = store.get("p/shared").await.expect("get");
        assert_eq!(shared.len(), 4096);
        assert!(shared.iter().all(|&b| b == shared[0]));
        assert_eq!(files_under(&root.0).len(), 17);
    }

    #[tokio::test]
    async fn a_staged_file_dropped_unplaced_leaves_nothing_and_a_placed_one_is_stored_once() {
        let root = TempRoot::new();
        let store = LocalDirStore::new(&root.0);
        let mut refused = store.stage().await.expect("stage");
        refused.write(b"refused bytes").await.expect("write");
        let refused_path = refused.path().to_path_buf();
        assert!(refused_path.starts_with(root.0.join(STAGING_DIR)) && refused_path.is_file());
        drop(refused);
        assert!(!refused_path.exists(), "a refused upload leaves nothing");
        // Dropped half-way through writing, unfinished: the same.
        let mut broken = store.stage().await.expect("stage");
        broken.write(&[7; 1000]).await.expect("write");
        drop(broken);
        let mut accepted = store.stage().await.expect("stage");
        accepted.write(b"hello ").await.expect("write");
        accepted.write(b"world").await.expect("write");
        let sha = accepted.finish().await.expect("finish");
        assert_eq!(sha, hex::encode(Sha256::digest(b"hello world")));
        assert_eq!(accepted.len(), 11);
        store.place(&accepted, "proofs/b9/x").await.expect("place");
        // A retried transaction places again: harmless.
        store.place(&accepted, "proofs/b9/x").await.expect("place again");
        drop(accepted);
        assert_eq!(store.get("proofs/b9/x").await.expect("get"), b"hello world");
        assert_eq!(files_under(&root.0), vec![root.0.join("proofs/b9/x").to_string_lossy().into_owned()]);
    }

    #[tokio::test]
    async fn files_written_before_a_cutoff_are_listed_and_deleted_by_key() {
        let root = TempRoot::new();
        let store = LocalDirStore::new(&root.0);
        assert!(store.written_before(SystemTime::now()).await.expect("empty store").is_empty());
        store.put("proofs/aa/old", b"1").await.expect("put");
        store.put("proofs/bb/new", b"2").await.expect("put");
        let mut stale = store.stage().await.expect("stage");
        stale.write(b"crash left me").await.expect("write");
        stale.finish().await.expect("flushed before its time is set");
        let stale_key =
            format!("{STAGING_DIR}/{}", stale.path().file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let day_ago = SystemTime::now() - std::time::Duration::from_secs(2 * 86_400);
        for path in [root.0.join("proofs/aa/old"), stale.path().to_path_buf()] {
            std::fs::OpenOptions::new().write(true).open(path).expect("open").set_modified(day_ago).expect("mtime");
        }
        let cutoff = SystemTime::now() - std::time::Duration::from_secs(86_400);
        let mut expected = vec!["proofs/aa/old".to_string(), stale_key.clone()];
        expected.sort();
        assert_eq!(store.written_before(cutoff).await.expect("list"), expected);
        assert!(store.delete("proofs/aa/old").await.expect("delete"));
        assert!(!store.delete("proofs/aa/old").await.expect("already gone"));
        assert!(store.delete(&stale_key).await.expect("delete"));
        assert_eq!(store.get("proofs/bb/new").await.expect("kept"), b"2");
        drop(stale);
    }
}
