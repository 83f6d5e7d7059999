//! The keys of the batch the writer is committing.
//!
//! A claim whose key is absent from the directory goes to the writer. When the key is absent
//! only because the batch that acquires it is being committed (a hot key: many callers arrive
//! within one fdatasync), queueing would cost the caller that commit plus one of its own. So
//! the writer marks the keys of a batch before committing it and settles them once it has
//! published the batch (or failed it); such a caller waits for the settlement and then reads
//! the published answer from the directory. Answers still come from committed state only.

use crate::index::DigestHasher;
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

type Shard = HashMap<u128, u64, BuildHasherDefault<DigestHasher>>;

pub(crate) struct Pending {
    shards: Box<[Mutex<Shard>]>,
    /// The last batch settled.
    settled: Mutex<u64>,
    /// Signalled at each settlement. parking_lot's `notify_all` wakes one waiter and moves the
    /// others to the mutex's queue, so the writer pays for one wake-up, not one per waiter.
    changed: Condvar,
}

impl Pending {
    pub(crate) fn new() -> Self {
        Pending {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            settled: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    fn shard(&self, digest: u128) -> &Mutex<Shard> {
        &self.shards[(digest >> 122) as usize % SHARDS]
    }

    /// Marks `digests` as being committed in `batch` (numbered from 1, increasing).
    pub(crate) fn mark(&self, batch: u64, digests: impl Iterator<Item = u128>) {
        for d in digests {
            self.shard(d).lock().insert(d, batch);
        }
    }

    /// Unmarks `digests` (published, or failed) and wakes the callers waiting for `batch`.
    pub(crate) fn settle(&self, batch: u64, digests: impl Iterator<Item = u128>) {
        for d in digests {
            let mut shard = self.shard(d).lock();
            if shard.get(&d) == Some(&batch) {
                shard.remove(&d);
            }
        }
        let mut settled = self.settled.lock();
        *settled = (*settled).max(batch);
        drop(settled);
        self.changed.notify_all();
    }

    /// The batch committing `digest`, if one is.
    pub(crate) fn batch_of(&self, digest: u128) -> Option<u64> {
        self.shard(digest).lock().get(&digest).copied()
    }

    /// Waits until `batch` is settled, for at most `timeout` (a safety net: the writer settles
    /// every batch it marks, whatever the commit's outcome).
    pub(crate) fn wait(&self, batch: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut settled = self.settled.lock();
        while *settled < batch {
            if self.changed.wait_until(&mut settled, deadline).timed_out() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_waiter_returns_once_its_batch_is_settled() {
        let p = Arc::new(Pending::new());
        p.mark(1, [7u128, 8].into_iter());
        assert_eq!(p.batch_of(7), Some(1));
        assert_eq!(p.batch_of(9), None);
        let waiter = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait(1, Duration::from_secs(60)))
        };
        std::thread::sleep(Duration::from_millis(20));
        p.settle(1, [7u128, 8].into_iter());
        waiter.join().unwrap();
        assert_eq!(p.batch_of(7), None);
        // Settled batches do not wait; an unsettled one times out.
        p.wait(1, Duration::from_secs(60));
        p.mark(2, [7u128].into_iter());
        let t = Instant::now();
        p.wait(2, Duration::from_millis(30));
        assert!(t.elapsed() >= Duration::from_millis(30));
    }
}
