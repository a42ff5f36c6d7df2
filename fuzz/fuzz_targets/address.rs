//! Any text as an IPPool entry: parsing never panics, and what parses prints as text that parses
//! back to the same range.
#![no_main]

use ferrolb_crds::addresses::parse_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(range) = parse_entry(text) {
        let again = parse_entry(&range.to_string()).expect("a printed range parses");
        assert_eq!(again, range);
        assert!(range.contains(&range.start()) && range.contains(&range.end()) && range.len() >= 1);
    }
});
