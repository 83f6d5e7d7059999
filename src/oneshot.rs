//! A one-shot reply slot: the writer answers a caller through it once.
//!
//! Callers wait for a commit (milliseconds: an fdatasync), so the waiting side parks at once
//! instead of spinning; with 64 callers on 2 cores, spinning waiters (as a channel's blocking
//! `recv` does before it parks) take CPU from the writer they are waiting for.

use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;

struct Slot<T> {
    value: Mutex<Option<Result<T>>>,
    ready: Condvar,
}

/// The writer's end. Dropping it unanswered answers `Error::Closed`.
pub(crate) struct Reply<T>(Option<Arc<Slot<T>>>);

/// The caller's end.
pub(crate) struct Answer<T>(Arc<Slot<T>>);

pub(crate) fn oneshot<T>() -> (Reply<T>, Answer<T>) {
    let slot = Arc::new(Slot {
        value: Mutex::new(None),
        ready: Condvar::new(),
    });
    (Reply(Some(Arc::clone(&slot))), Answer(slot))
}

impl<T> Reply<T> {
    pub(crate) fn send(mut self, value: Result<T>) {
        if let Some(slot) = self.0.take() {
            Self::put(&slot, value);
        }
    }

    fn put(slot: &Slot<T>, value: Result<T>) {
        *slot.value.lock() = Some(value);
        slot.ready.notify_one();
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            Self::put(&slot, Err(Error::Closed));
        }
    }
}

impl<T> Answer<T> {
    /// Waits for the answer.
    pub(crate) fn wait(self) -> Result<T> {
        let mut value = self.0.value.lock();
        loop {
            if let Some(v) = value.take() {
                return v;
            }
            self.0.ready.wait(&mut value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_once_or_closed() {
        let (reply, answer) = oneshot::<u32>();
        let t = std::thread::spawn(move || answer.wait());
        reply.send(Ok(7));
        assert_eq!(t.join().unwrap().unwrap(), 7);
        let (reply, answer) = oneshot::<u32>();
        drop(reply);
        assert!(matches!(answer.wait(), Err(Error::Closed)));
    }
}
