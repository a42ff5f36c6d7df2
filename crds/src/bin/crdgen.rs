//! Writes the CRD YAML that the Helm chart ships: `crdgen [DIR]` (default `charts/ferrolb/crds`).

use std::path::PathBuf;

use ferrolb_crds::{BGPPeer, IPPool};
use kube::CustomResourceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("charts/ferrolb/crds"));
    std::fs::create_dir_all(&dir)?;
    for (name, yaml) in [
        (IPPool::crd_name(), ferrolb_crds::ippool::crd_yaml()?),
        (BGPPeer::crd_name(), ferrolb_crds::bgppeer::crd_yaml()?),
    ] {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
