//! The CRD YAML the chart ships is exactly what the Rust types generate.

#[test]
fn the_committed_crd_matches_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb/crds/ippools.ferrolb.io.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let generated = ferrolb_crds::ippool::crd_yaml().unwrap();
    assert!(
        committed == generated,
        "{} is out of date: run `cargo run -p ferrolb-crds --bin crdgen` and commit the result",
        path.display()
    );
}
