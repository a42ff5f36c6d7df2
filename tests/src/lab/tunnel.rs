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
    Ok(tokio::spawn(async move { relay(|| listener.accept(), target).await }))
}

/// Relays every accepted connection to `target`, for ever. A failed accept (too many open files,
/// a connection reset before it was accepted) is logged and waited out; it never ends the relay, or
/// every process of the node would lose its API server for the rest of the run.
async fn relay<F, Fut>(mut accept: F, target: SocketAddr)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<(TcpStream, SocketAddr)>>,
{
    loop {
        match accept().await {
            Ok((mut inbound, _)) => {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "the lab's API relay could not accept a connection; going on");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_accept_error_does_not_end_the_relay() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = target.accept().await {
                let _ = s.write_all(b"api").await;
            }
        });
        let front = std::sync::Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let front_addr = front.local_addr().unwrap();
        let mut failed = false;
        let accept = move || {
            let (front, fail) = (front.clone(), !std::mem::replace(&mut failed, true));
            async move {
                if fail {
                    return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
                }
                front.accept().await
            }
        };
        tokio::spawn(relay(accept, target_addr));
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        let mut got = String::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), client.read_to_string(&mut got)).await;
        assert!(read.is_ok(), "nothing relayed after the failed accept");
        assert_eq!(got, "api");
    }
}
