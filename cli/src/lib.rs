//! ferrolb's command-line tool: pure parts (reading YAML, checking pools, translating MetalLB's
//! configuration, laying out the status) that the `ferrolb` binary wires to files and the API.

pub mod check;
pub mod migrate;
pub mod status;
pub mod yaml;
