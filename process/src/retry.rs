//! Retrying an API call that must eventually succeed (start-up registration, a Secret to create):
//! a transient error — a 500, a 429, a conflict, an API server restarting — is logged and tried
//! again with a doubling wait, never the end of the process.

use std::future::Future;
use std::time::Duration;

/// The wait before the `attempt`-th retry (0-based): `first` doubled each time, at most `max`.
pub fn wait(attempt: u32, first: Duration, max: Duration) -> Duration {
    first.saturating_mul(2u32.saturating_pow(attempt.min(16))).min(max)
}

/// Calls `call` until it succeeds, waiting `first`, then twice as long each time up to `max`.
pub async fn until_ok<T, E, F, Fut>(what: &str, first: Duration, max: Duration, mut call: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    for attempt in 0.. {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                let pause = wait(attempt, first, max);
                tracing::warn!(error = %e, "{what} failed; retrying in {} ms", pause.as_millis());
                tokio::time::sleep(pause).await;
            }
        }
    }
    unreachable!("the attempts never run out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_its_bound() {
        let (first, max) = (Duration::from_millis(200), Duration::from_secs(5));
        let waits: Vec<u128> = (0..7).map(|a| wait(a, first, max).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(wait(u32::MAX, first, max), max, "no overflow");
    }

    #[tokio::test]
    async fn it_returns_the_first_success() {
        let mut failures = 3;
        let got = until_ok("a call", Duration::from_millis(1), Duration::from_millis(2), || {
            let fail = failures > 0;
            failures -= i32::from(fail);
            async move { if fail { Err("no") } else { Ok(7) } }
        })
        .await;
        assert_eq!((got, failures), (7, 0));
    }
}
