//! The CRD YAML the chart ships is exactly what the Rust types generate.

#[test]
fn the_committed_crds_match_the_types() {
    for (file, generated) in [
        ("ippools.ferrolb.io.yaml", ferrolb_crds::ippool::crd_yaml().unwrap()),
        ("bgppeers.ferrolb.io.yaml", ferrolb_crds::bgppeer::crd_yaml().unwrap()),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb/crds").join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            committed == generated,
            "{} is out of date: run `cargo run -p ferrolb-crds --bin crdgen` and commit the result",
            path.display()
        );
    }
}
