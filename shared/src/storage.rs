//! Where proof files live. The API writes the uploaded bytes and the
//! `proof_validation` job reads them back through [`ProofStore`], so an
//! object store can replace the local directory without touching either.
//! [`LocalDirStore`] is the default: one file per key under a root
//! directory taken from the configuration.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use crate::error::Error;

/// Bytes by key. Keys are relative paths made of `[A-Za-z0-9._/-]`; an
/// implementation refuses anything else so a key can never name a file
/// outside its store. `put` of an existing key replaces it (a retried upload
/// writes the same bytes again).
pub trait ProofStore: Send + Sync {
    fn put<'a>(&'a self, key: &'a str, bytes: &'a [u8]) -> BoxFuture<'a, Result<(), Error>>;
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<u8>, Error>>;
}

/// A [`ProofStore`] on the local file system.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// A store under `root`; the directory is created on the first `put`,
    /// so a fresh deployment needs no setup step.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
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
}
