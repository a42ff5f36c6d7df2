//! The work queue of Services to reconcile, as a plain value: marks coalesce until the Service
//! runs, a Service marked while its write is in flight runs again after it, at most `concurrency`
//! writes are in flight, and a failed write comes back later — soon after a conflict (the watch
//! brings the fresh copy at once), with exponential backoff after other errors. Time is passed in,
//! so every rule is unit tested without an API server or a clock.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use ferrolb_crds::ServiceKey;

/// How a write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// Written.
    Done,
    /// 409: our copy of the Service was stale.
    Conflict,
    /// Anything else (500, 429, a timeout, ...).
    Failed,
}

/// After a conflict: the watch delivers the newer copy almost at once.
pub const CONFLICT_RETRY: Duration = Duration::from_millis(50);

/// The first retry after another failure; doubled per further failure.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

/// Failures beyond this many stop doubling the delay (100 ms × 2^7 = 12.8 s).
pub const BACKOFF_MAX_DOUBLINGS: u32 = 7;

/// The delay before retrying after the `attempt`-th failure in a row (1-based).
pub fn retry_delay(result: WriteResult, attempt: u32) -> Option<Duration> {
    match result {
        WriteResult::Done => None,
        WriteResult::Conflict => Some(CONFLICT_RETRY),
        WriteResult::Failed => Some(BACKOFF_BASE * 2u32.pow(attempt.min(BACKOFF_MAX_DOUBLINGS))),
    }
}

/// Services waiting to be reconciled, in flight, and waiting to be retried.
#[derive(Debug)]
pub struct Queue {
    concurrency: usize,
    ready: VecDeque<ServiceKey>,
    queued: HashSet<ServiceKey>,
    inflight: HashSet<ServiceKey>,
    redo: HashSet<ServiceKey>,
    retries: BTreeSet<(Instant, ServiceKey)>,
    failures: HashMap<ServiceKey, u32>,
}

impl Queue {
    /// An empty queue allowing `concurrency` writes in flight (at least one).
    pub fn new(concurrency: usize) -> Self {
        Self {
            concurrency: concurrency.max(1),
            ready: VecDeque::new(),
            queued: HashSet::new(),
            inflight: HashSet::new(),
            redo: HashSet::new(),
            retries: BTreeSet::new(),
            failures: HashMap::new(),
        }
    }

    /// Marks a Service for reconciliation; marks before it runs coalesce, and a mark while its
    /// write is in flight makes it run once more after the write.
    pub fn add(&mut self, key: &ServiceKey) {
        if self.inflight.contains(key) {
            self.redo.insert(key.clone());
        } else if self.queued.insert(key.clone()) {
            self.ready.push_back(key.clone());
        }
    }

    /// The next Service to reconcile, if there is room for its write; retries that are due by
    /// `now` join the queue first.
    pub fn next(&mut self, now: Instant) -> Option<ServiceKey> {
        while let Some(first) = self.retries.first().filter(|(at, _)| *at <= now).cloned() {
            self.retries.remove(&first);
            self.add(&first.1);
        }
        if self.inflight.len() >= self.concurrency {
            return None;
        }
        // A key queued before its write started is skipped here and comes back through `redo`.
        while let Some(key) = self.ready.pop_front() {
            self.queued.remove(&key);
            if self.inflight.contains(&key) {
                self.redo.insert(key);
                continue;
            }
            return Some(key);
        }
        None
    }

    /// The Service's write has started.
    pub fn started(&mut self, key: &ServiceKey) {
        self.inflight.insert(key.clone());
    }

    /// The Service's write ended; returns the delay of the retry it was given, if any.
    pub fn finished(&mut self, key: &ServiceKey, result: WriteResult, now: Instant) -> Option<Duration> {
        self.inflight.remove(key);
        if result == WriteResult::Done {
            self.failures.remove(key);
            if self.redo.remove(key) {
                self.add(key);
            }
            return None;
        }
        // The retry re-reads the Service, which covers any mark made meanwhile.
        self.redo.remove(key);
        let n = self.failures.entry(key.clone()).or_insert(0);
        *n += 1;
        let delay = retry_delay(result, *n)?;
        self.retries.insert((now + delay, key.clone()));
        Some(delay)
    }

    /// When the earliest retry is due, for the loop's timer.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retries.first().map(|(at, _)| *at)
    }

    /// Writes in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> ServiceKey {
        ServiceKey::from(s)
    }

    fn drain(q: &mut Queue, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.next(now)).map(|k| k.to_string()).collect()
    }

    #[test]
    fn marks_coalesce_and_keep_their_order() {
        let mut q = Queue::new(8);
        let now = Instant::now();
        for key in ["d/a", "d/b", "d/a", "d/c", "d/b"] {
            q.add(&k(key));
        }
        assert_eq!(drain(&mut q, now), ["d/a", "d/b", "d/c"]);
        assert_eq!(q.next(now), None);
    }

    #[test]
    fn a_mark_during_a_write_runs_once_more_after_it() {
        let mut q = Queue::new(8);
        let now = Instant::now();
        q.add(&k("d/a"));
        let a = q.next(now).unwrap();
        q.started(&a);
        q.add(&a);
        q.add(&a);
        assert_eq!(q.next(now), None, "not while its write is in flight");
        assert_eq!(q.finished(&a, WriteResult::Done, now), None);
        assert_eq!(drain(&mut q, now), ["d/a"], "once, after the write");
        q.finished(&a, WriteResult::Done, now);
        assert_eq!(q.next(now), None);
    }

    #[test]
    fn no_more_writes_in_flight_than_allowed() {
        let mut q = Queue::new(2);
        let now = Instant::now();
        for key in ["d/a", "d/b", "d/c"] {
            q.add(&k(key));
        }
        let a = q.next(now).unwrap();
        q.started(&a);
        let b = q.next(now).unwrap();
        q.started(&b);
        assert_eq!(q.next(now), None, "two in flight");
        assert_eq!(q.inflight(), 2);
        q.finished(&a, WriteResult::Done, now);
        assert_eq!(q.next(now), Some(k("d/c")));
        // A reconcile that writes nothing never takes a slot.
        q.add(&k("d/e"));
        assert_eq!(q.next(now), Some(k("d/e")));
    }

    #[test]
    fn a_conflict_comes_back_soon() {
        let mut q = Queue::new(4);
        let t0 = Instant::now();
        q.add(&k("d/a"));
        let a = q.next(t0).unwrap();
        q.started(&a);
        assert_eq!(q.finished(&a, WriteResult::Conflict, t0), Some(CONFLICT_RETRY));
        assert_eq!(q.next(t0), None, "not before its time");
        assert_eq!(q.next_retry(), Some(t0 + CONFLICT_RETRY));
        assert_eq!(q.next(t0 + CONFLICT_RETRY), Some(k("d/a")));
        assert_eq!(q.next_retry(), None);
    }

    #[test]
    fn failed_writes_back_off_exponentially_and_success_resets() {
        let mut q = Queue::new(4);
        let mut now = Instant::now();
        let a = k("d/a");
        let mut delays = Vec::new();
        for _ in 0..10 {
            q.add(&a);
            let key = q.next(now).expect("due again");
            q.started(&key);
            let d = q.finished(&key, WriteResult::Failed, now).unwrap();
            delays.push(d.as_millis());
            assert_eq!(q.next(now + d - Duration::from_millis(1)), None, "not before the backoff ends");
            now += d;
            // The retry is due now; take it back out so the next round starts clean.
            assert_eq!(q.next(now), Some(a.clone()));
        }
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 12800, 12800, 12800, 12800]);
        q.add(&a);
        let key = q.next(now).unwrap();
        q.started(&key);
        q.finished(&key, WriteResult::Done, now);
        q.started(&key);
        assert_eq!(q.finished(&key, WriteResult::Failed, now), Some(Duration::from_millis(200)), "the count restarts");
    }

    #[test]
    fn a_mark_during_a_failed_write_is_covered_by_the_retry() {
        let mut q = Queue::new(4);
        let now = Instant::now();
        q.add(&k("d/a"));
        let a = q.next(now).unwrap();
        q.started(&a);
        q.add(&a);
        let d = q.finished(&a, WriteResult::Failed, now).unwrap();
        assert_eq!(q.next(now), None, "the mark waits for the retry");
        assert_eq!(drain(&mut q, now + d), ["d/a"], "and runs once");
    }

    #[test]
    fn retries_of_several_services_come_back_in_time_order() {
        let mut q = Queue::new(4);
        let t0 = Instant::now();
        for key in ["d/slow", "d/fast"] {
            q.add(&k(key));
        }
        let slow = q.next(t0).unwrap();
        q.started(&slow);
        let fast = q.next(t0).unwrap();
        q.started(&fast);
        q.finished(&slow, WriteResult::Failed, t0);
        q.finished(&fast, WriteResult::Conflict, t0);
        assert_eq!(drain(&mut q, t0 + Duration::from_secs(1)), ["d/fast", "d/slow"]);
    }
}
