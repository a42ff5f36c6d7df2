//! docs/CONFIGURATION.md is generated from the sources of truth — the IPPool CRD's schema (the Rust
//! types), the annotation names, both binaries' `--help` and metrics, and the chart's values.yaml — and this
//! test fails when the file drifts from them. `FERROLB_BLESS=1 cargo test -p ferrolb-tests --test
//! reference` rewrites it.

use std::fmt::Write as _;

use ferrolb_crds::annotations::{self, ALLOCATED_FROM, ANNOUNCED_CONDITION, EXCLUDE_FROM_LB_LABEL};
use ferrolb_process::telemetry::Telemetry;
use ferrolb_tests::lab::processes;
use kube::CustomResourceExt;
use serde_json::Value;

/// One row per field of the schema under `path`, depth first.
fn fields(out: &mut String, path: &str, schema: &Value) {
    let Some(props) = schema["properties"].as_object() else { return };
    for (name, s) in props {
        let full = format!("{path}.{name}");
        let ty = match s["type"].as_str() {
            Some("array") => format!("[]{}", s["items"]["type"].as_str().unwrap_or("object")),
            Some(t) => t.to_string(),
            None => "object".to_string(),
        };
        let default = if s["default"].is_null() { String::new() } else { format!("`{}`", s["default"]) };
        let doc = s["description"].as_str().unwrap_or_default().replace('\n', " ").replace('|', "\\|");
        let _ = writeln!(out, "| `{full}` | {ty} | {default} | {doc} |");
        // Label selectors are Kubernetes' own type; their fields are not ferrolb's to document.
        if !name.ends_with("Selector") {
            fields(out, &full, s);
            fields(out, &format!("{full}[]"), &s["items"]);
        }
    }
}

fn help(binary: &str) -> String {
    let path = processes::binary(binary).expect("the binaries are built (cargo build --workspace)");
    let out = std::process::Command::new(path).arg("--help").output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// One row per metric family of `telemetry`: the name users query, type, labels, help.
fn metrics(out: &mut String, telemetry: &Telemetry) {
    struct Row {
        name: String,
        ty: String,
        labels: Vec<String>,
        help: String,
    }
    let text = telemetry.encode().unwrap();
    let mut rows: Vec<Row> = Vec::new();
    for line in text.lines().filter(|l| *l != "# EOF") {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            rows.push(Row { name: name.into(), ty: String::new(), labels: Vec::new(), help: help.into() });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            rows.last_mut().unwrap().ty = rest.split_once(' ').unwrap().1.into();
        } else if let Some(row) = rows.last_mut() {
            // The first sample names what users query: a counter's `_total`, a histogram's series.
            let series = line.split([' ', '{']).next().unwrap();
            if row.ty == "counter" {
                row.name = series.to_string();
            }
            if let Some((_, labels)) = line.split_once('{') {
                for (k, _) in labels.split(',').filter_map(|l| l.split_once('=')) {
                    if k != "le" && !row.labels.iter().any(|l| l == k) {
                        row.labels.push(k.to_string());
                    }
                }
            }
        }
    }
    out.push_str("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for r in rows {
        let labels: Vec<String> = r.labels.iter().map(|l| format!("`{l}`")).collect();
        let _ = writeln!(out, "| `{}` | {} | {} | {} |", r.name, r.ty, labels.join(", "), r.help);
    }
}

fn generate() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code by `tests/tests/reference.rs` (the IPPool and BGPPeer types, the annotation names,\n\
         the binaries' `--help`, the chart's values.yaml); a test fails when this file drifts from them.\n\
         Decisions and examples are in [API.md](API.md) and [ALLOCATION.md](ALLOCATION.md).\n\n",
    );
    let crd = serde_json::to_value(ferrolb_crds::IPPool::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    out.push_str("## IPPool (`ferrolb.io/v1alpha1`, cluster-scoped)\n\n| field | type | default | meaning |\n|---|---|---|---|\n");
    fields(&mut out, "spec", &schema["properties"]["spec"]);
    out.push_str("\nStatus (written by the controller):\n\n| field | type | default | meaning |\n|---|---|---|---|\n");
    fields(&mut out, "status", &schema["properties"]["status"]);
    let crd = serde_json::to_value(ferrolb_crds::BGPPeer::crd()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    out.push_str("\n## BGPPeer (`ferrolb.io/v1alpha1`, cluster-scoped)\n\n| field | type | default | meaning |\n|---|---|---|---|\n");
    fields(&mut out, "spec", &schema["properties"]["spec"]);
    out.push_str("\nStatus (each node's entry written by its speaker; counts and Ready by the controller):\n\n| field | type | default | meaning |\n|---|---|---|---|\n");
    fields(&mut out, "status", &schema["properties"]["status"]);

    out.push_str("\n## Service annotations, labels and conditions\n\n| name | set by | meaning | also read |\n|---|---|---|---|\n");
    for (a, meaning) in [
        (&annotations::POOL, "the IPPool to take the address from"),
        (&annotations::IPS, "the addresses to give (a comma list, at most one per family)"),
        (&annotations::SHARING_KEY, "Services with the same key may share an address (on different ports)"),
        (
            &annotations::REPLICATE_CONNECTIONS,
            "`\"true\"`: established connections survive a failover (Cluster policy; speakers with `--conntrack-sync conntrackd`; docs/SPEAKER.md)",
        ),
    ] {
        let aliases: Vec<String> = a.aliases.iter().map(|x| format!("`{x}`")).collect();
        let _ = writeln!(out, "| `{}` | you | {meaning} | {} |", a.name, aliases.join(", "));
    }
    let _ = writeln!(out, "| `{ALLOCATED_FROM}` | controller | the pool the Service's addresses came from | |");
    let _ = writeln!(
        out,
        "| `{ANNOUNCED_CONDITION}` (status condition) | speaker | which node announces the address, on which interfaces | |"
    );
    let _ = writeln!(out, "| `{EXCLUDE_FROM_LB_LABEL}` (Node label) | you | this node never announces | |");

    for (binary, what) in [
        ("ferrolb-controller", "Controller flags"),
        ("ferrolb-speaker", "Speaker flags"),
        ("ferrolb", "Command-line tool"),
    ] {
        let _ = write!(out, "\n## {what} (`{binary} --help`)\n\n```text\n{}```\n", help(binary));
    }
    out.push_str(
        "\n## Metrics\n\nServed on `/metrics` of each binary's metrics port (the chart's `*.metrics` values). The speaker's\n\
         series carry no node label: Prometheus's `instance` (the node's address, the speaker runs in the\n\
         host network) or `pod` tells the nodes apart. The alerts and the dashboard use only these names\n\
         (a lab test checks them against the running binaries). The speaker serves them on the node's\n\
         loopback unless the chart's `speaker.metricsExposed` is true (a ServiceMonitor needs that).\n\n### Controller\n\n",
    );
    metrics(&mut out, &Telemetry::new(|r| ferrolb_controller::metrics::Metrics::with_every_label().register(r)));
    out.push_str("\n### Speaker\n\n");
    metrics(&mut out, &Telemetry::new(|r| ferrolb_speaker::metrics::Metrics::with_every_label().register(r)));
    let values =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/ferrolb/values.yaml")).unwrap();
    let _ = write!(
        out,
        "\n## Helm values (`charts/ferrolb/values.yaml`)\n\nEvery flag above has a value; `values.schema.json` refuses unknown keys and wrong types.\n\n```yaml\n{values}```\n"
    );
    out
}

#[test]
fn the_configuration_reference_is_generated_from_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIGURATION.md");
    let fresh = generate();
    if std::env::var_os("FERROLB_BLESS").is_some() {
        std::fs::write(path, &fresh).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == fresh,
        "docs/CONFIGURATION.md is out of date: run FERROLB_BLESS=1 cargo test -p ferrolb-tests --test reference"
    );
}
