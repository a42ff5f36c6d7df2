//! Any datagram, signed or not: decoding never panics, whatever decodes encodes back to the same
//! message, and the replay guard never panics on it.
#![no_main]

use ferrolb_speaker::membership::heartbeat::{self, Replay};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret";

fuzz_target!(|bytes: &[u8]| {
    for secret in [None, Some(SECRET)] {
        if let Ok(hb) = heartbeat::decode(bytes, secret) {
            assert_eq!(heartbeat::decode(&heartbeat::encode(&hb, secret), secret), Ok(hb.clone()));
            let mut guard = Replay::new(5_000, secret.is_some());
            let _ = guard.check(&hb, hb.sent_at_ms);
            assert!(guard.check(&hb, hb.sent_at_ms).is_err(), "a replay was accepted");
        }
    }
});
