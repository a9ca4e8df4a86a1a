//! Where proof files live: an object store through the `object_store`
//! crate, local files for one host (`file:///abs/dir`, the default) or any
//! S3-compatible store for many (`s3://bucket[/prefix]` with the standard
//! `AWS_*` variables), so no process reads another's disk.
//!
//! The API streams an upload into a local staging file (hashed and bounded
//! on the way) and writes it to the store only once the upload is accepted,
//! under its content address; the `proof_validation` job reads it back
//! through [`ProofStore`], and the retention job deletes what no proof
//! references. A store that cannot be reached is [`Error::Unavailable`]
//! (503 at the api, a retried job at the worker), after a short, bounded
//! retry: a store outage must be a fast 503, not a three-minute wait.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, PutPayload, RetryConfig};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::config::StorageUrl;
use crate::error::Error;

/// Where uploads in progress are staged, under a local store's root (one
/// file system: the store's own write is then a rename away). Keys under it
/// are never a proof's; retention deletes the ones a crash left.
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
    /// Writes a finished staging file into the store under `key`. Placing
    /// again (a retried transaction) is harmless.
    fn place<'a>(&'a self, staged: &'a StagedFile, key: &'a str) -> BoxFuture<'a, Result<(), Error>>;
    /// Keys of the stored objects last written before `cutoff`, staging
    /// files left by a crash included (no proof ever references those).
    fn written_before(&self, cutoff: SystemTime) -> BoxFuture<'_, Result<Vec<String>, Error>>;
    /// When an object was last written (`None`: it is not there).
    fn written_at<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<SystemTime>, Error>>;
    /// Deletes a stored object; `false` when it was already gone.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>>;
}

/// An upload in progress: the bytes stream into a local file while their
/// SHA-256 is computed. Dropped, it deletes its file: a refused upload, an
/// error half-way or a client that went away leave nothing behind.
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

    /// Flushes the bytes and answers their SHA-256 (lower-case hex).
    pub async fn finish(&mut self) -> Result<String, Error> {
        if let Some(mut file) = self.file.take() {
            file.flush().await.map_err(|e| Error::internal(format!("storage staging flush: {e}")))?;
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

/// How long one store request may take, and how long a store outage is
/// retried before it is [`Error::Unavailable`]: a client waits seconds for
/// its 503, never the crate's default three minutes.
const CONNECT_TIMEOUT: &str = "2s";
const REQUEST_TIMEOUT: &str = "10s";
const RETRY: RetryConfig = RetryConfig {
    backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(1), base: 2.0 },
    max_retries: 2,
    retry_timeout: Duration::from_secs(4),
};

/// A [`ProofStore`] over any `object_store` backend.
#[derive(Clone)]
pub struct ObjectProofStore {
    store: Arc<dyn ObjectStore>,
    /// Where uploads are staged on this host.
    staging: PathBuf,
    /// The store as the operator configured it, for logs.
    describe: String,
}

impl std::fmt::Debug for ObjectProofStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectProofStore").field("store", &self.describe).field("staging", &self.staging).finish()
    }
}

impl ObjectProofStore {
    /// The store `STORAGE_URL` names. A local directory is created if
    /// missing; an S3 store reads the standard `AWS_*` variables (endpoint,
    /// region, credentials, `AWS_ALLOW_HTTP`) and applies the URL's prefix.
    /// Nothing is contacted here: an unreachable store shows on first use.
    pub fn open(url: &StorageUrl) -> Result<Self, Error> {
        let store = match url {
            StorageUrl::File(dir) => Self::local(dir)?,
            StorageUrl::S3 { bucket, prefix } => {
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(RETRY)
                    .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout), CONNECT_TIMEOUT)
                    .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), REQUEST_TIMEOUT)
                    .build()
                    .map_err(|e| Error::internal(format!("STORAGE_URL {url}: {e}")))?;
                let store: Arc<dyn ObjectStore> = match prefix {
                    Some(prefix) => Arc::new(PrefixStore::new(s3, prefix.as_str())),
                    None => Arc::new(s3),
                };
                let staging = std::env::temp_dir().join("kobatela-proof-staging");
                Self { store, staging, describe: url.to_string() }
            }
        };
        tracing::info!(store = %store.describe, staging = %store.staging.display(), "proof store");
        Ok(store)
    }

    fn local(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("STORAGE_URL: cannot create {}: {e}", dir.display())))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| Error::internal(format!("STORAGE_URL: {}: {e}", dir.display())))?;
        Ok(Self { store: Arc::new(fs), staging: dir.join(STAGING_DIR), describe: format!("file://{}", dir.display()) })
    }

    /// A store over any backend (tests use the in-memory one).
    pub fn with_store(store: Arc<dyn ObjectStore>, staging: PathBuf, describe: impl Into<String>) -> Self {
        Self { store, staging, describe: describe.into() }
    }

    /// Deletes staging files a crash left on this host (older than a day:
    /// another process's upload in progress is never touched).
    pub async fn sweep_staging(&self) -> usize {
        let cutoff = SystemTime::now() - Duration::from_secs(86_400);
        let Ok(mut entries) = tokio::fs::read_dir(&self.staging).await else { return 0 };
        let mut swept = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let old = entry.metadata().await.and_then(|m| m.modified()).is_ok_and(|at| at < cutoff);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                swept += 1;
            }
        }
        swept
    }
}

fn location(key: &str) -> Result<object_store::path::Path, Error> {
    check_key(key)?;
    object_store::path::Path::parse(key).map_err(|e| Error::internal(format!("invalid storage key {key:?}: {e}")))
}

/// An `object_store` error as ours: a missing object or a bad path is a
/// bug or lost data (internal, never a client's 404), anything else
/// (connection refused, timeouts, 5xx after the short retry) means the
/// store cannot be reached now.
fn store_error(what: &str, key: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. }
        | object_store::Error::InvalidPath { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented => Error::internal(format!("storage {what} {key}: {e}")),
        other => Error::Unavailable(format!("the proof store cannot be reached ({what} {key}): {}", chain(&other))),
    }
}

/// An error with its whole source chain (the cause of a connection error
/// is in its sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl ProofStore for ObjectProofStore {
    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let path = location(key)?;
            let payload = PutPayload::from(bytes.to_vec());
            self.store.put(&path, payload).await.map_err(|e| store_error("write", key, e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        Box::pin(async move {
            let path = location(key)?;
            let got = self.store.get(&path).await.map_err(|e| store_error("read", key, e))?;
            let bytes = got.bytes().await.map_err(|e| store_error("read", key, e))?;
            Ok(bytes.to_vec())
        })
    }

    fn stage(&self) -> BoxFuture<'_, Result<StagedFile, Error>> {
        Box::pin(StagedFile::create_in(self.staging.clone()))
    }

    fn place<'a>(&'a self, staged: &'a StagedFile, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if staged.sha256.is_none() {
                return Err(Error::internal("place of an unfinished staging file"));
            }
            // At most PROOF_MAX_BYTES, read once; a PUT is atomic (an object
            // appears whole or not at all) and a rewrite of the same
            // content-addressed key writes the same bytes, made fresh for
            // retention.
            let bytes = tokio::fs::read(&staged.path)
                .await
                .map_err(|e| Error::internal(format!("storage staging read: {e}")))?;
            self.put(key, &bytes).await
        })
    }

    fn written_before(&self, cutoff: SystemTime) -> BoxFuture<'_, Result<Vec<String>, Error>> {
        Box::pin(async move {
            let mut keys = Vec::new();
            let mut listing = self.store.list(None);
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| store_error("list", "", e))?;
                if SystemTime::from(meta.last_modified) < cutoff && check_key(meta.location.as_ref()).is_ok() {
                    keys.push(meta.location.to_string());
                }
            }
            keys.sort();
            Ok(keys)
        })
    }

    fn written_at<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<SystemTime>, Error>> {
        Box::pin(async move {
            match self.store.head(&location(key)?).await {
                Ok(meta) => Ok(Some(SystemTime::from(meta.last_modified))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_error("head", key, e)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let path = location(key)?;
            match self.store.head(&path).await {
                Err(object_store::Error::NotFound { .. }) => return Ok(false),
                Err(e) => return Err(store_error("head", key, e)),
                Ok(_) => {}
            }
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(store_error("delete", key, e)),
            }
        })
    }
}

/// Refuses keys that could leave the root or that a store would read
/// differently from what was written: empty, absolute, `..`, empty or `.`
/// segments, a trailing `/`, or any character outside `[A-Za-z0-9._/-]`.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempRoot(PathBuf);

    impl TempRoot {
        fn new() -> Self {
            Self(std::env::temp_dir().join(format!("kobatela-store-{}", uuid::Uuid::new_v4())))
        }

        fn store(&self) -> ObjectProofStore {
            ObjectProofStore::open(&StorageUrl::File(self.0.clone())).expect("a local store")
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
        out.sort();
        out
    }

    #[tokio::test]
    async fn bytes_put_under_a_nested_key_come_back_unchanged_and_replace_the_old_ones() {
        let root = TempRoot::new();
        let store = root.store();
        let bytes: Vec<u8> = (0..=255).collect();
        store.put("proofs/ab/cd/0123-photo.jpg", &bytes).await.expect("put");
        assert_eq!(store.get("proofs/ab/cd/0123-photo.jpg").await.expect("get"), bytes);
        assert!(root.0.join("proofs/ab/cd/0123-photo.jpg").is_file());
        store.put("a/x.bin", b"first").await.expect("put");
        store.put("a/x.bin", b"second").await.expect("put again");
        assert_eq!(store.get("a/x.bin").await.expect("get"), b"second");
        let expected: Vec<String> = ["a/x.bin", "proofs/ab/cd/0123-photo.jpg"]
            .iter()
            .map(|k| root.0.join(k).to_string_lossy().into_owned())
            .collect();
        assert_eq!(files_under(&root.0), expected, "no temporary file left behind");
    }

    #[tokio::test]
    async fn a_missing_key_is_an_internal_error_not_empty_bytes_nor_an_outage() {
        let root = TempRoot::new();
        let store = root.store();
        assert!(matches!(store.get("nothing/here").await, Err(Error::Internal(_))));
        assert_eq!(store.written_at("nothing/here").await.expect("head"), None);
        assert!(!store.delete("nothing/here").await.expect("delete"));
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_reached_is_unavailable_quickly() {
        // A port nobody listens on: connection refused, retried briefly.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let s3 = AmazonS3Builder::new()
            .with_bucket_name("proofs")
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_region("us-east-1")
            .with_access_key_id("k")
            .with_secret_access_key("s")
            .with_allow_http(true)
            .with_retry(RETRY)
            .build()
            .expect("builder");
        let store = ObjectProofStore::with_store(Arc::new(s3), std::env::temp_dir(), "s3://proofs");
        let started = std::time::Instant::now();
        let got = store.get("proofs/aa/x").await;
        assert!(matches!(&got, Err(Error::Unavailable(_))), "{got:?}");
        assert!(matches!(store.put("proofs/aa/x", b"x").await, Err(Error::Unavailable(_))));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn keys_that_could_escape_the_root_or_are_malformed_are_refused() {
        let root = TempRoot::new();
        let store = ObjectProofStore::open(&StorageUrl::File(root.0.join("inner"))).expect("store");
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
        assert!(files_under(&root.0).is_empty(), "nothing was written");
        for good in ["a", "A-z_0.9", "proofs/2030/05/17/0190c2d4-1b2a-7e3c.jpg", ".hidden/x", "a.b/c"] {
            assert!(check_key(good).is_ok(), "{good:?}");
        }
    }

    #[tokio::test]
    async fn the_store_works_behind_the_trait_from_parallel_tasks() {
        let root = TempRoot::new();
        let store: Arc<dyn ProofStore> = Arc::new(root.store());
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    // Everyone writes the same key too: the last write wins
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
        let store = root.store();
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
    async fn objects_written_before_a_cutoff_are_listed_and_deleted_by_key() {
        let root = TempRoot::new();
        let store = root.store();
        assert!(store.written_before(SystemTime::now()).await.expect("empty store").is_empty());
        store.put("proofs/aa/old", b"1").await.expect("put");
        store.put("proofs/bb/new", b"2").await.expect("put");
        let mut stale = store.stage().await.expect("stage");
        stale.write(b"crash left me").await.expect("write");
        stale.finish().await.expect("flushed before its time is set");
        let stale_key =
            format!("{STAGING_DIR}/{}", stale.path().file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        let day_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
        for path in [root.0.join("proofs/aa/old"), stale.path().to_path_buf()] {
            std::fs::OpenOptions::new().write(true).open(path).expect("open").set_modified(day_ago).expect("mtime");
        }
        let cutoff = SystemTime::now() - Duration::from_secs(86_400);
        let mut expected = vec!["proofs/aa/old".to_string(), stale_key.clone()];
        expected.sort();
        assert_eq!(store.written_before(cutoff).await.expect("list"), expected);
        let at = store.written_at("proofs/aa/old").await.expect("head").expect("there");
        assert!(at < cutoff);
        assert!(store.delete("proofs/aa/old").await.expect("delete"));
        assert!(!store.delete("proofs/aa/old").await.expect("already gone"));
        assert!(store.delete(&stale_key).await.expect("delete"));
        assert_eq!(store.get("proofs/bb/new").await.expect("kept"), b"2");
        drop(stale);
    }
}
