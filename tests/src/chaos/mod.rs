//! The seeded chaos soak: from a seed, a random mix of what users and failures do to a lab cluster
//! (two controller replicas, three speakers), with the invariants checked all along and at quiet
//! points. Pure parts (`rng`, `world`, `action`, `checks`) are unit tested; `driver` does the I/O.

pub mod action;
pub mod checks;
pub mod driver;
pub mod rng;
pub mod world;
