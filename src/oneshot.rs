//! A one-shot reply slot: the writer answers a caller through it once.
//!
//! Callers wait for a commit (milliseconds: an fdatasync), so the waiting side parks at once
//! instead of spinning; with 64 callers on 2 cores, spinning waiters (as a channel's blocking
//! `recv` does before it parks) take CPU from the writer they are waiting for.
//!
//! Waking a parked thread is a futex syscall (several microseconds on a VM, where it is an
//! inter-processor interrupt): done by the writer for each of a batch's ~50 callers, it was
//! 44% of the writer's CPU at 64 threads, time in which the next batch did not start. So a
//! batch is answered through a [`Fanout`]: the writer stores every answer first, then wakes two
//! callers; each caller woken passes the wake-up on to two more before it returns, a binary
//! tree over the batch that runs on the callers' time.

use crate::error::{Error, Result};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Wake-ups each woken caller passes on.
const FAN: usize = 2;

/// An answer, and the fan-out of the batch it came with, if any.
type Stored<T> = (Result<T>, Option<Arc<Fanout>>);

struct Slot<T> {
    value: Mutex<Option<Stored<T>>>,
    ready: Condvar,
}

/// Something to wake: a slot of any answer type.
trait Wake: Send + Sync {
    /// Wakes the caller if its answer is still there; `false` when the caller already took it
    /// (it needs no wake-up, and may have taken it before the batch started, passing nothing
    /// on: the wake-up goes to the next slot instead).
    fn wake(&self) -> bool;
}

impl<T: Send> Wake for Slot<T> {
    fn wake(&self) -> bool {
        let waiting = self.value.lock().is_some();
        if waiting {
            // The caller takes its answer after this check, so after the batch started: it
            // passes the wake-up on, whether this notification finds it parked or not.
            self.ready.notify_one();
        }
        waiting
    }
}

/// The wake-ups of one batch, shared by the writer and the batch's callers.
struct Fanout {
    /// Set when the batch starts.
    slots: std::sync::OnceLock<Vec<Arc<dyn Wake>>>,
    /// The next slot to wake.
    next: AtomicUsize,
    /// Set once every answer of the batch is stored. A caller that found its answer before (it
    /// had not parked yet) passes nothing on; waking skips such slots (their answer is gone),
    /// so every slot woken passes the wake-up on and the tree reaches every slot.
    started: AtomicBool,
}

impl Fanout {
    /// Wakes the next `FAN` slots, once the batch has started.
    fn pass_on(&self) {
        if !self.started.load(Ordering::Acquire) {
            return;
        }
        let Some(slots) = self.slots.get() else {
            return;
        };
        let mut woken = 0;
        while woken < FAN {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            match slots.get(i) {
                Some(slot) => woken += usize::from(slot.wake()),
                None => return,
            }
        }
    }
}

/// The answers of one batch, stored first and woken together (see the module docs).
pub(crate) struct Batch {
    fanout: Arc<Fanout>,
    slots: Vec<Arc<dyn Wake>>,
}

impl Batch {
    pub(crate) fn new(capacity: usize) -> Batch {
        Batch {
            fanout: Arc::new(Fanout {
                slots: std::sync::OnceLock::new(),
                next: AtomicUsize::new(0),
                started: AtomicBool::new(false),
            }),
            slots: Vec::with_capacity(capacity),
        }
    }

    /// Wakes the callers: every answer is stored.
    pub(crate) fn start(self) {
        drop(self);
    }
}

/// A batch starts when dropped, so answers already stored are woken even if the writer
/// unwinds before starting it.
impl Drop for Batch {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut self.slots);
        if self.fanout.slots.set(slots).is_ok() {
            self.fanout.started.store(true, Ordering::Release);
            self.fanout.pass_on();
        }
    }
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

impl<T: Send + 'static> Reply<T> {
    /// Answers and wakes the caller.
    pub(crate) fn send(mut self, value: Result<T>) {
        if let Some(slot) = self.0.take() {
            *slot.value.lock() = Some((value, None));
            slot.ready.notify_one();
        }
    }

    /// Stores the answer without waking the caller: [`Batch::start`] will.
    pub(crate) fn store(mut self, value: Result<T>, batch: &mut Batch) {
        if let Some(slot) = self.0.take() {
            batch.slots.push(Arc::clone(&slot) as Arc<dyn Wake>);
            *slot.value.lock() = Some((value, Some(Arc::clone(&batch.fanout))));
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            *slot.value.lock() = Some((Err(Error::Closed), None));
            slot.ready.notify_one();
        }
    }
}

impl<T> Answer<T> {
    /// Waits for the answer (and passes the batch's wake-ups on).
    pub(crate) fn wait(self) -> Result<T> {
        let mut value = self.0.value.lock();
        loop {
            if let Some((v, fanout)) = value.take() {
                drop(value);
                if let Some(f) = fanout {
                    f.pass_on();
                }
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

    /// Callers that take their answers before the batch starts pass nothing on; the callers
    /// parked behind them must still be woken.
    #[test]
    fn early_takers_do_not_stop_the_fanout() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (mut replies, mut early) = (Vec::new(), Vec::new());
        for i in 0..6usize {
            let (reply, answer) = oneshot::<usize>();
            replies.push(reply);
            if i < 4 {
                early.push(answer);
            } else {
                let tx = done_tx.clone();
                std::thread::spawn(move || tx.send(answer.wait().unwrap()).unwrap());
            }
        }
        // Let the last two park.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut batch = Batch::new(6);
        for (i, reply) in replies.into_iter().enumerate() {
            reply.store(Ok(i), &mut batch);
        }
        // The first four take their answers before the batch starts.
        for (i, answer) in early.into_iter().enumerate() {
            assert_eq!(answer.wait().unwrap(), i);
        }
        batch.start();
        let mut late: Vec<usize> = (0..2)
            .map(|_| {
                done_rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("a parked caller was never woken")
            })
            .collect();
        late.sort_unstable();
        assert_eq!(late, [4, 5]);
    }

    #[test]
    fn a_fanout_wakes_every_caller_of_a_batch() {
        for callers in [1usize, 2, 3, 7, 64] {
            for _ in 0..20 {
                let (replies, waiters): (Vec<_>, Vec<_>) = (0..callers)
                    .map(|i| {
                        let (reply, answer) = oneshot::<usize>();
                        (reply, std::thread::spawn(move || (i, answer.wait())))
                    })
                    .unzip();
                // Some callers park before their answer is stored, some find it at once.
                std::thread::yield_now();
                let mut batch = Batch::new(callers);
                for (i, reply) in replies.into_iter().enumerate() {
                    reply.store(Ok(i * 10), &mut batch);
                }
                batch.start();
                for w in waiters {
                    let (i, answer) = w.join().unwrap();
                    assert_eq!(answer.unwrap(), i * 10);
                }
            }
        }
    }
}
