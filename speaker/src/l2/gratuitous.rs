//! When a takeover's gratuitous ARP / unsolicited NA is repeated. Pure.
//!
//! One announcement can be lost; clients that missed it would keep sending to the old node until
//! their neighbour entry expires. So the first goes out at once and repeats follow at growing
//! intervals, each only while the address is still ours.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// When repeats of a takeover's announcement go out, after the first.
pub const REPEATS: [Duration; 4] =
    [Duration::from_millis(250), Duration::from_millis(750), Duration::from_millis(1500), Duration::from_secs(3)];

/// Repeats still to send: (when, interface, address).
#[derive(Debug, Default)]
pub struct Repeats {
    pending: Vec<(Instant, String, IpAddr)>,
}

impl Repeats {
    /// Schedules the repeats of an announcement of `ip` on `interface` made at `now`.
    pub fn schedule(&mut self, interface: &str, ip: IpAddr, now: Instant) {
        self.pending.extend(REPEATS.iter().map(|d| (now + *d, interface.to_string(), ip)));
    }

    /// Takes the repeats due by `now`.
    pub fn due(&mut self, now: Instant) -> Vec<(String, IpAddr)> {
        let (due, later): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(t, _, _)| *t <= now);
        self.pending = later;
        due.into_iter().map(|(_, i, ip)| (i, ip)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_repeats_at_growing_intervals() {
        let mut r = Repeats::default();
        let t0 = Instant::now();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        r.schedule("eth0", ip, t0);
        let mut sent = Vec::new();
        for ms in (0..=3500).step_by(50) {
            for (iface, a) in r.due(t0 + Duration::from_millis(ms)) {
                sent.push((ms, iface, a));
            }
        }
        let at: Vec<u64> = sent.iter().map(|(ms, _, _)| *ms).collect();
        assert_eq!(at, [250, 750, 1500, 3000]);
        assert!(sent.iter().all(|(_, i, a)| i == "eth0" && *a == ip));
        assert!(r.due(t0 + Duration::from_secs(10)).is_empty());
    }
}
