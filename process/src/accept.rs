//! The accept loop every TCP listener of Ferry's daemons shares (the
//! proxy's SOCKS5, capture, inbound and HBONE listeners, the admin servers).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Accepts connections until the task is dropped, running `handle` on its
/// own task for each. The peer address is canonical (an IPv4 client of a
/// dual-stack listener is seen as IPv4, as the configuration knows it). An
/// accept error (out of descriptors, a connection reset while queued) is
/// logged and retried after a pause instead of ending the listener.
pub async fn serve<F, Fut>(listener: TcpListener, what: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                tokio::spawn(handle(stream, peer));
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
