//! Connecting to an address with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why a TCP connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("connecting to {address}: {source}")]
    Io {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Connects to `address` within `timeout`, with Nagle off (the proxy
/// relays what it reads at once; batching is the application's business).
pub async fn connect(address: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::Timeout(address))?
        .map_err(|source| ConnectError::Io { address, source })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}
