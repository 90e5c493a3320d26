//! Coordination between the requests of one deployment: *turns* (at most one holder of a key at a time: the
//! changes of one approval, the registration of one agent name, the use of one approved action) and *wake-ups*
//! (whoever waits on a key is woken when it changes: a long-poll or a held tool call waiting for its approval).
//!
//! Features take their turns and wake-ups only through these handles, never from mutexes and channels of their
//! own, because this is where a second implementation plugs in: today one kla owns its data dir, so both are in
//! process (lock stripes, `watch` channels); several replicas on a shared database replace them with row or
//! advisory locks and `LISTEN/NOTIFY` behind the same calls (docs/replicas.md). Knows nothing of what the keys mean;
//! no IO.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use tokio::sync::watch;

/// Stripes per [`Turns`]: enough that unrelated keys rarely wait for each other.
const STRIPES: usize = 64;

/// Turns over keys: [`Turns::take`] waits until no one else holds the key's turn. Keys share stripes, so a holder
/// must not take a second turn of the same `Turns` while it holds one (it could be its own stripe).
pub struct Turns {
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: RandomState,
}

/// A held turn; dropping it lets the next holder in.
#[must_use = "the turn ends when the guard is dropped"]
pub struct Turn<'a> {
    _held: tokio::sync::MutexGuard<'a, ()>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns::new()
    }
}

impl Turns {
    /// An empty set of turns.
    pub fn new() -> Turns {
        Turns {
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Waits for the turn of `key` (first come, first served) and holds it until the guard is dropped.
    pub async fn take<K: Hash + ?Sized>(&self, key: &K) -> Turn<'_> {
        let i = (self.hasher.hash_one(key) as usize) % self.stripes.len();
        Turn {
            _held: self.stripes[i].lock().await,
        }
    }
}

/// Wake-ups over keys, each carrying the value that ended the wait (a waiter that gets `None`, or none at all,
/// reads the state itself). Subscribe first, then read the state, then wait: a change between the read and the wait
/// still wakes the waiter.
pub struct Wakeups<T> {
    waiters: Mutex<HashMap<String, watch::Sender<Option<T>>>>,
}

/// One waiter of a key: [`Waiter::changed`] returns once the key is notified.
pub struct Waiter<'a, T> {
    of: &'a Wakeups<T>,
    key: String,
    rx: watch::Receiver<Option<T>>,
}

impl<T> Default for Wakeups<T> {
    fn default() -> Self {
        Wakeups {
            waiters: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Wakeups<T> {
    /// No waiters yet.
    pub fn new() -> Wakeups<T> {
        Wakeups::default()
    }

    /// Starts waiting on `key`.
    pub fn subscribe(&self, key: &str) -> Waiter<'_, T> {
        let rx = self
            .waiters
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe();
        Waiter {
            of: self,
            key: key.to_owned(),
            rx,
        }
    }

    /// Wakes every waiter of `key` with `value`. Nobody waiting: nothing to do.
    pub fn notify(&self, key: &str, value: T) {
        let mut w = self.waiters.lock();
        if let Some(tx) = w.get(key) {
            tx.send_replace(Some(value));
            if tx.receiver_count() == 0 {
                w.remove(key);
            }
        }
    }

    /// Whether anyone waits on `key` (for tests and metrics).
    pub fn waiting(&self, key: &str) -> bool {
        self.waiters
            .lock()
            .get(key)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }
}

impl<T: Clone> Waiter<'_, T> {
    /// Waits for the next notification of the key and returns its value.
    pub async fn changed(&mut self) -> Option<T> {
        // The sender lives in the map while a receiver does (it is removed only without receivers), so `Err` (all
        // senders gone) cannot happen while `self` exists; it is read as "nothing carried" all the same.
        match self.rx.changed().await {
            Ok(()) => self.rx.borrow_and_update().clone(),
            Err(_) => None,
        }
    }
}

impl<T> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        let mut w = self.of.waiters.lock();
        // This receiver still counts until it is dropped after this body: the last waiter sees a count of one.
        if w.get(&self.key).is_some_and(|tx| tx.receiver_count() <= 1) {
            w.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_turn_keeps_the_next_holder_of_its_key_out_until_it_is_dropped() {
        let turns = Arc::new(Turns::new());
        let first = turns.take("k").await;
        let t = turns.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let second = tokio::spawn(async move {
            let _turn = t.take("k").await;
            tx.send(()).await.ok();
        });
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(50), rx.recv())
                .await
                .is_err(),
            "the second holder got the turn while the first held it"
        );
        drop(first);
        assert_eq!(rx.recv().await, Some(()));
        second.await.ok();
    }

    #[tokio::test]
    async fn a_waiter_subscribed_before_a_notify_gets_its_value_and_the_last_one_leaves_no_entry() {
        let w: Wakeups<u32> = Wakeups::new();
        let mut a = w.subscribe("appr_1");
        let mut b = w.subscribe("appr_1");
        assert!(w.waiting("appr_1"));
        w.notify("appr_2", 9);
        w.notify("appr_1", 7);
        assert_eq!(a.changed().await, Some(7));
        assert_eq!(b.changed().await, Some(7));
        drop(a);
        assert!(w.waiting("appr_1"));
        drop(b);
        assert!(!w.waiting("appr_1"));
        assert!(w.waiters.lock().is_empty(), "no entry is left behind");
    }
}
