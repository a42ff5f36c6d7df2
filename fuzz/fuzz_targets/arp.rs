//! Any frame: parsing never panics, and an answer the responder would send is itself a
//! well-formed ARP reply for the address asked about, to the asker.
#![no_main]

use ferrolb_speaker::l2::arp::{self, Arp};
use libfuzzer_sys::fuzz_target;

const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fuzz_target!(|frame: &[u8]| {
    let parsed = arp::parse(frame);
    let _ = parsed.and_then(|a| a.claim());
    if let Some((vip, reply)) = arp::answer(frame, OURS, |_| Some(OURS)) {
        let Some(Arp::Request { sender_mac, sender_ip, target_ip }) = parsed else {
            panic!("answered a frame that is not a request: {parsed:?}");
        };
        assert_eq!(vip, target_ip);
        assert_eq!(
            arp::parse(&reply),
            Some(Arp::Reply { sender_mac: OURS, sender_ip: vip, target_mac: sender_mac, target_ip: sender_ip })
        );
    }
});
