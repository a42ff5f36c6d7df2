//! Makes an API server that listens on the host's loopback reachable from inside a namespace at
//! that namespace's own 127.0.0.1:PORT, the way a node reaches its apiserver: a listening socket
//! is created inside the namespace (from a thread that enters it), and every connection is
//! relayed to the server.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::netns::LabError;

fn listen_in(ns: &str, addr: SocketAddr) -> Result<std::net::TcpListener, LabError> {
    let listener = super::netns::in_ns(ns, || std::net::TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Relays connections to `listen` inside `ns` to `target` (on this process's namespace).
pub fn expose(ns: &str, listen: SocketAddr, target: SocketAddr) -> Result<JoinHandle<()>, LabError> {
    let listener = TcpListener::from_std(listen_in(ns, listen)?)?;
    Ok(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}
