//! What this node must do, decided from the cluster's objects. `views` reads the Kubernetes
//! objects into plain data; `desired` decides, per address, who announces it.

pub mod desired;
pub mod views;
