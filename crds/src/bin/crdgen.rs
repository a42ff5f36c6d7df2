//! Writes the CRD YAML that the Helm chart ships: `crdgen [DIR]` (default `charts/ferrolb/crds`).

use std::path::PathBuf;

use ferrolb_crds::IPPool;
use kube::CustomResourceExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("charts/ferrolb/crds"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.yaml", IPPool::crd_name()));
    std::fs::write(&path, ferrolb_crds::ippool::crd_yaml()?)?;
    println!("wrote {}", path.display());
    Ok(())
}
