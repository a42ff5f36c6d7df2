//! The `ferrolb` binary on files: `migrate` on MetalLB's documented examples writes IPPools that
//! `check` accepts; `check` refuses a bad pool with exit code 1; unreadable input is exit code 2.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn ferrolb(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrolb"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn migrate_writes_ippools_that_check_accepts() {
    let out = ferrolb(&["migrate", &fixture("metallb-l2.yaml"), &fixture("metallb-advanced.yaml")], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(yaml.matches("kind: IPPool").count(), 6, "{yaml}");
    let notes = String::from_utf8(out.stderr).unwrap();
    assert!(yaml.contains("kind: BGPPeer"), "{yaml}");
    assert!(!notes.contains("not translated yet"), "{notes}");
    // Both files name first-pool and second-pool: check sees the duplicates as overlaps.
    let only_l2 = ferrolb(&["migrate", &fixture("metallb-l2.yaml")], None);
    let checked = ferrolb(&["check", "-"], Some(&String::from_utf8(only_l2.stdout).unwrap()));
    let report = String::from_utf8(checked.stdout).unwrap();
    assert!(checked.status.success(), "{report}");
    assert!(report.contains("ok       IPPool first-pool: IPv4 256"), "{report}");
    // The /124's first address is its subnet-router anycast address: never handed out.
    assert!(report.contains("ok       IPPool second-pool: IPv4 5, IPv6 15"), "{report}");
    // MetalLB's BGP samples: pools with bgp sections, peers and a Secret; check accepts them all.
    let bgp = ferrolb(&["migrate", "--namespace", "lb", &fixture("metallb-bgp.yaml")], None);
    let yaml = String::from_utf8(bgp.stdout).unwrap();
    assert!(yaml.contains("namespace: lb"), "{yaml}");
    let checked = ferrolb(&["check", "-"], Some(&yaml));
    let report = String::from_utf8(checked.stdout).unwrap();
    assert!(checked.status.success(), "{report}");
    assert!(report.contains("ok       BGPPeer tor-a: 172.30.0.3 AS 64512 (iBGP from AS 64512), BFD, MD5"), "{report}");
    assert!(report.contains("skipped  Secret bgp-tor-a"), "{report}");
}

#[test]
fn check_refuses_a_bad_pool_and_says_why() {
    let bad = "apiVersion: ferrolb.io/v1alpha1\nkind: IPPool\nmetadata: {name: home}\nspec:\n  addresses: [192.168.1.250-192.168.1.240]\n";
    let out = ferrolb(&["check", "-"], Some(bad));
    assert_eq!(out.status.code(), Some(1));
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.starts_with("invalid  IPPool home: "), "{report}");
    let unreadable = ferrolb(&["check", "/nonexistent/pools.yaml"], None);
    assert_eq!(unreadable.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unreadable.stderr).contains("/nonexistent/pools.yaml"));
}
