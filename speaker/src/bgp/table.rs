//! The speaker's own kernel routing table, over netlink: one blackhole route per advertised
//! prefix, with ferrolb's route protocol number and the route class as its metric. No policy rule
//! points at the table, so it never routes a packet; the routing daemon only reads it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::IpNetwork;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The route protocol number ferrolb's kernel routes carry (`ip route ... proto 245`). Chosen
/// clear of the kernel's (0–18), Babel's (42), Open/R's (99), BIRD's (12) and FRR's (186–197): FRR's
/// zebra takes routes with its own numbers for its own, so with 197 (its OpenFabric) it neither
/// imported nor let go of them.
pub const ROUTE_PROTOCOL: u8 = 245;

/// A netlink error, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct TableError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

/// The table, through a netlink connection of its own.
pub struct Table {
    handle: Handle,
    id: u32,
}

impl Table {
    /// Opens a netlink connection (in this process's network namespace) for table `id`.
    pub fn open(id: u32) -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle, id })
    }

    /// The prefixes in the table that ferrolb wrote, with their metrics.
    pub async fn read(&self) -> Result<BTreeMap<IpNetwork, u32>, TableError> {
        let mut out = BTreeMap::new();
        for (family, message) in [
            ("IPv4", RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()),
            ("IPv6", RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(message)
                .execute()
                .try_collect()
                .await
                .map_err(|source| TableError { what: format!("listing {family} routes"), source })?;
            out.extend(routes.iter().filter_map(|r| self.ours(r)));
        }
        Ok(out)
    }

    fn ours(&self, r: &RouteMessage) -> Option<(IpNetwork, u32)> {
        let table = r
            .attributes
            .iter()
            .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
            .unwrap_or(u32::from(r.header.table));
        if table != self.id || r.header.protocol != RouteProtocol::from(ROUTE_PROTOCOL) {
            return None;
        }
        let len = r.header.destination_prefix_length;
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        let dst = dst.or(match r.header.address_family {
            AddressFamily::Inet => Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            AddressFamily::Inet6 => Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            _ => None,
        })?;
        let metric =
            r.attributes.iter().find_map(|a| if let RouteAttribute::Priority(p) = a { Some(*p) } else { None });
        Some((IpNetwork::new(dst, len).ok()?, metric.unwrap_or(0)))
    }

    fn message(&self, net: IpNetwork, metric: u32) -> Result<RouteMessage, TableError> {
        let builder =
            RouteMessageBuilder::<IpAddr>::new().destination_prefix(net.network(), net.prefix()).map_err(|e| {
                TableError { what: format!("route {net}"), source: rtnetlink::Error::InvalidNla(e.to_string()) }
            })?;
        Ok(builder
            .table_id(self.id)
            .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
            .kind(RouteType::BlackHole)
            .priority(metric)
            .build())
    }

    /// Makes the table hold exactly `want`; returns how many routes were added and removed.
    pub async fn sync(&self, want: &BTreeMap<IpNetwork, u32>) -> Result<(usize, usize), TableError> {
        let have = self.read().await?;
        let mut removed = 0;
        for (net, metric) in &have {
            if want.get(net) != Some(metric) {
                self.handle
                    .route()
                    .del(self.message(*net, *metric)?)
                    .execute()
                    .await
                    .map_err(|source| TableError { what: format!("removing {net}"), source })?;
                removed += 1;
            }
        }
        let mut added = 0;
        for (net, metric) in want {
            if have.get(net) != Some(metric) {
                self.handle
                    .route()
                    .add(self.message(*net, *metric)?)
                    .replace()
                    .execute()
                    .await
                    .map_err(|source| TableError { what: format!("adding {net}"), source })?;
                added += 1;
            }
        }
        Ok((added, removed))
    }
}
