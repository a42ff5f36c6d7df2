//! ferrolb's test support: the in-memory Kubernetes API server (`sim-apiserver`) and the
//! network-namespace lab. Not part of the product.

pub mod admission_policy;
pub mod apiserver;
pub mod chaos;
pub mod lab;
pub mod rbac;
