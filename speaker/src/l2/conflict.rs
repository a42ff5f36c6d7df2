//! When another host answering for one of our addresses is a conflict worth reporting. Pure.
//!
//! Right after a takeover the previous owner may still be finishing its announcements: that is
//! the election converging, not a foreign host, so claims are ignored for a quiet period. After
//! it, every claim is counted, but a Warning Event is written at most once a minute per address,
//! whatever MACs claim it: a flood of spoofed frames, each from a new MAC, costs one Event a
//! minute and memory bounded by the addresses this node announces.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long after taking an address over claims by others are not conflicts.
pub const TAKEOVER_QUIET: Duration = Duration::from_secs(4);

/// How often a conflict on one address is reported again.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What to do about a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a conflict: not our address, or within the quiet period after a takeover.
    Ignore,
    /// A conflict already reported recently: count it only.
    Count,
    /// A conflict to count and report.
    Report,
}

/// Conflicts reported lately.
#[derive(Debug, Default)]
pub struct Conflicts {
    reported: BTreeMap<IpAddr, Instant>,
}

impl Conflicts {
    /// Judges a foreign host claiming `ip`, which this node announces since `owned_since` (None:
    /// it does not announce it).
    pub fn judge(&mut self, ip: IpAddr, owned_since: Option<Instant>, now: Instant) -> Verdict {
        let Some(since) = owned_since else { return Verdict::Ignore };
        if now.saturating_duration_since(since) < TAKEOVER_QUIET {
            return Verdict::Ignore;
        }
        // Entries older than the report interval say nothing any more.
        self.reported.retain(|_, at| now.saturating_duration_since(*at) < REPORT_EVERY);
        if self.reported.contains_key(&ip) {
            return Verdict::Count;
        }
        self.reported.insert(ip, now);
        Verdict::Report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "198.51.100.7";

    #[test]
    fn not_ours_or_just_taken_over_is_no_conflict() {
        let mut c = Conflicts::default();
        let t0 = Instant::now();
        let ip: IpAddr = IP.parse().unwrap();
        assert_eq!(c.judge(ip, None, t0), Verdict::Ignore);
        assert_eq!(c.judge(ip, Some(t0), t0 + TAKEOVER_QUIET - Duration::from_millis(1)), Verdict::Ignore);
        assert_eq!(c.judge(ip, Some(t0), t0 + TAKEOVER_QUIET), Verdict::Report);
    }

    #[test]
    fn one_report_a_minute_per_address() {
        let mut c = Conflicts::default();
        let since = Instant::now();
        let t = since + TAKEOVER_QUIET;
        let ip: IpAddr = IP.parse().unwrap();
        assert_eq!(c.judge(ip, Some(since), t), Verdict::Report);
        assert_eq!(c.judge(ip, Some(since), t + Duration::from_secs(30)), Verdict::Count);
        assert_eq!(c.judge(ip, Some(since), t + REPORT_EVERY), Verdict::Report, "again after a minute");
        let other: IpAddr = "198.51.100.8".parse().unwrap();
        assert_eq!(c.judge(other, Some(since), t), Verdict::Report, "another address is news");
    }

    #[test]
    fn a_flood_of_spoofed_macs_is_one_report_and_bounded_memory() {
        let mut c = Conflicts::default();
        let since = Instant::now();
        let t = since + TAKEOVER_QUIET;
        let ip: IpAddr = IP.parse().unwrap();
        let reports = (0..20_000u32)
            .map(|i| c.judge(ip, Some(since), t + Duration::from_micros(u64::from(i))))
            .filter(|v| *v == Verdict::Report)
            .count();
        assert_eq!(reports, 1);
        assert_eq!(c.reported.len(), 1);
    }
}
