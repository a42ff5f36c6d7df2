//! Whether the process's loops still run, for /healthz: a loop beats on every turn, and a loop
//! that has not beaten for its allowance makes /healthz answer 503, so the kubelet restarts a
//! process whose loop is stuck (a runaway computation once burned a core for minutes while
//! /healthz said 200). A loop counts only once it has beaten, so a slow start (an API server
//! that is down) never fails liveness and never turns into a crash loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// "Not watched": the loop has not started, or it stopped on purpose.
const IDLE: u64 = 0;

/// One loop's last sign of life.
#[derive(Debug, Clone)]
pub struct Beat {
    name: &'static str,
    allowance: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last beat, plus one; [`IDLE`] when not watched.
    last: Arc<AtomicU64>,
}

impl Beat {
    /// Records that the loop ran just now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last.store(ms + 1, Ordering::Relaxed);
    }

    /// Stops watching the loop until its next beat (it ended on purpose: a term as leader).
    pub fn rest(&self) {
        self.last.store(IDLE, Ordering::Relaxed);
    }
}

/// Every loop watched.
#[derive(Clone, Default)]
pub struct Loops {
    beats: Arc<Mutex<Vec<Beat>>>,
}

impl Loops {
    /// Watches a loop named `name` that must beat at least every `allowance` once it has begun.
    pub fn watch(&self, name: &'static str, allowance: Duration) -> Beat {
        let beat = Beat { name, allowance, epoch: Instant::now(), last: Arc::new(AtomicU64::new(IDLE)) };
        if let Ok(mut beats) = self.beats.lock() {
            beats.push(beat.clone());
        }
        beat
    }

    /// The first stuck loop and for how long it has not run, if any.
    pub fn stuck(&self) -> Option<(&'static str, Duration)> {
        let beats = self.beats.lock().ok()?;
        beats.iter().find_map(|b| {
            let last = b.last.load(Ordering::Relaxed);
            let since = b.epoch.elapsed().saturating_sub(Duration::from_millis(last.checked_sub(1)?));
            (since > b.allowance).then_some((b.name, since))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_is_stuck_one_that_never_began_or_rests_is_not() {
        let loops = Loops::default();
        let fast = loops.watch("main", Duration::from_millis(30));
        let _never = loops.watch("never started", Duration::ZERO);
        assert_eq!(loops.stuck(), None, "no loop has begun");
        fast.beat();
        assert_eq!(loops.stuck(), None);
        std::thread::sleep(Duration::from_millis(60));
        let (name, since) = loops.stuck().expect("stuck");
        assert_eq!(name, "main");
        assert!(since >= Duration::from_millis(60), "{since:?}");
        fast.beat();
        assert_eq!(loops.stuck(), None, "beating again");
        fast.rest();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(loops.stuck(), None, "resting");
    }
}
