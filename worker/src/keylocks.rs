//! Jobs that contend on one row (a hot mandate, say) run one after the
//! other in this worker instead of failing each other's SERIALIZABLE
//! transactions and retrying: each waits for the key's lock, in arrival
//! order. Across replicas they can still conflict; the transaction's retry
//! is the guard there, and the conflicts are at most one per replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held while a job of the key runs; the entry goes when nobody needs it.
pub struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        KeyGuard { owner: self, key: key.to_string(), guard: Some(guard) }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it: no job of this key runs or waits.
        if map.get(&self.key).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn jobs_of_one_key_run_one_at_a_time_and_the_map_empties() {
        let locks = Arc::new(KeyLocks::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (locks, running, most) = (locks.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    let _held = locks.lock("mandate:1").await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert!(locks.locks.lock().expect("map").is_empty());
        // Another key is never held up by the first.
        let _a = locks.lock("a").await;
        let _b = tokio::time::timeout(std::time::Duration::from_millis(100), locks.lock("b")).await.expect("b");
    }
}
