//! BGP mode: every eligible node advertises the addresses of pools with `bgp.enabled` through a
//! routing daemon. The speaker writes the routes into a kernel table of its own (`table`), which
//! the daemon exports: BIRD, configured and supervised here (`bird`, `daemon`), or a daemon the
//! user runs (`--bgp external`). What to advertise (`routes`) and the peers (`peers`) are pure.

pub mod announcer;
pub mod bird;
pub mod daemon;
pub mod driver;
pub mod peers;
pub mod routes;
pub mod status;
pub mod table;
