//! Any frame: parsing never panics, and an answer the responder would send is itself a valid
//! neighbour advertisement (checksum, hop limit) of the address asked about.
#![no_main]

use ferrolb_speaker::l2::ndp::{self, Ndp};
use libfuzzer_sys::fuzz_target;

const OURS: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

fuzz_target!(|frame: &[u8]| {
    let parsed = ndp::parse(frame);
    if let Some((target, advert)) = ndp::answer(frame, OURS, |_| Some(OURS)) {
        assert!(matches!(parsed, Some(Ndp::Solicit { target: t, .. }) if t == target), "answered {parsed:?}");
        match ndp::parse(&advert) {
            Some(Ndp::Advert { target: t, .. }) => assert_eq!(t, target),
            other => panic!("our advertisement does not parse as one: {other:?}"),
        }
    }
});
