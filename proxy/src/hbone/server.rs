//! The HBONE listener (port 15008): terminates mutual TLS and HTTP/2, and
//! hands every CONNECT stream to [`crate::inbound::Inbound`].
//!
//! Plaintext, a client without a mesh certificate, a certificate from
//! another CA or trust domain, or an expired one fail the TLS handshake,
//! which is counted as a TLS failure. The peer's verified identity goes
//! with every stream, for the policy and telemetry that use it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};

use super::H2Settings;
use crate::inbound::Inbound;
use crate::telemetry::metrics::{FailureReason, Reporter};
use crate::telemetry::Parties;

/// Why an HBONE connection ended badly; TLS failures are counted.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Other(String),
}

/// The HBONE listener.
#[derive(Debug, Clone)]
pub struct HboneServer {
    pub tls: Arc<rustls::ServerConfig>,
    pub settings: H2Settings,
    /// Longest a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection without an open stream for this long is closed
    /// (gracefully: GOAWAY, so a stream being opened is not lost).
    pub idle_timeout: Duration,
    pub inbound: Arc<Inbound>,
    /// The client proxy is PINGed this often, and taken for dead (its
    /// connection dropped, its streams and their pod connections reset)
    /// when it does not answer within the timeout: a node that went away
    /// without closing would otherwise hold them for ever.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Becomes true when the proxy stops: every connection is sent GOAWAY
    /// (its open streams go on; new ones go to another proxy or wait).
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// Reads a stream's request: a CONNECT to a socket address (`ip:port`, as
/// HBONE names a pod), with the client the peer proxy reports. Anything
/// else is answered with the status returned.
pub fn read_connect(
    request: http::Request<h2::RecvStream>,
) -> Result<crate::inbound::Tunnel, http::StatusCode> {
    let (target, client) = connect_target(request.method(), request.uri(), request.headers())?;
    Ok(crate::inbound::Tunnel {
        target,
        client,
        request,
    })
}

/// The target and reported client of a CONNECT request (pure: what the
/// listener checks before anything else).
pub fn connect_target(
    method: &http::Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<(SocketAddr, Option<String>), http::StatusCode> {
    if method != http::Method::CONNECT {
        return Err(http::StatusCode::METHOD_NOT_ALLOWED);
    }
    // Authority form only (`ip:port`): no scheme, no path.
    if uri.scheme().is_some() || uri.path_and_query().is_some() {
        return Err(http::StatusCode::BAD_REQUEST);
    }
    let target = uri
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        .ok_or(http::StatusCode::BAD_REQUEST)?;
    let client = headers
        .get(super::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((target, client))
}

/// The streams open on one connection, and a wake-up when none are left.
#[derive(Debug, Default)]
struct OpenStreams {
    count: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

/// Held by a stream while it is open.
struct StreamGuard(Arc<OpenStreams>);

impl OpenStreams {
    fn enter(self: &Arc<Self>) -> StreamGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        StreamGuard(self.clone())
    }

    /// Resolves once no stream has been open for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(std::sync::atomic::Ordering::Acquire) > 0 {
                changed.await;
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(idle) => {
                    if self.count.load(std::sync::atomic::Ordering::Acquire) == 0 {
                        return;
                    }
                }
                () = changed => {}
            }
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl HboneServer {
    /// Serves until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        let this = Arc::new(self);
        ferry_process::accept::serve(listener, "hbone", |tcp, peer| {
            let this = this.clone();
            async move {
                let local = tcp.local_addr().ok();
                if let Err(e) = this.clone().connection(tcp, peer).await {
                    tracing::info!(%peer, error = %e, "HBONE connection failed");
                    if let ConnectionError::Tls(_) = e {
                        let target: &dyn std::fmt::Display = match &local {
                            Some(l) => l,
                            None => &"-",
                        };
                        this.inbound.telemetry.failure(
                            Reporter::Destination,
                            &Parties::default(),
                            FailureReason::TlsFailure,
                            peer,
                            target,
                            &e,
                        );
                    }
                }
            }
        })
        .await
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Result<(), ConnectionError> {
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            self.handshake_timeout,
            super::record::accept(self.tls.clone(), tcp, self.settings.tls_send_buffer),
        )
        .await
        .map_err(|_| ConnectionError::Tls("TLS handshake timed out".into()))?
        .map_err(|e| ConnectionError::Tls(format!("TLS handshake failed: {e}")))?;
        let identity = tls
            .peer_certificate
            .as_ref()
            .map(crate::identity::tls::identity_of)
            .transpose()
            .map_err(|e| ConnectionError::Other(e.to_string()))?
            .ok_or_else(|| ConnectionError::Tls("no client certificate".into()))?;
        let mut connection = tokio::time::timeout(
            self.handshake_timeout,
            self.settings
                .server()
                .handshake::<_, bytes::Bytes>(tls.stream),
        )
        .await
        .map_err(|_| ConnectionError::Other("HTTP/2 handshake timed out".into()))?
        .map_err(|e| ConnectionError::Other(format!("HTTP/2 handshake: {e}")))?;
        tracing::debug!(%peer, %identity, "HBONE connection accepted");
        let identity = Arc::new(identity);
        let open = Arc::new(OpenStreams::default());
        let mut closing = false;
        let mut stopping = self.stopping.clone();
        let mut keepalive = super::Keepalive::new(
            connection.ping_pong(),
            self.keepalive_interval,
            self.keepalive_timeout,
        );
        loop {
            let next = tokio::select! {
                next = connection.accept() => next,
                () = keepalive.dead() => {
                    return Err(ConnectionError::Other(format!(
                        "the client proxy did not answer a keepalive PING within {:?}: HBONE connection dropped",
                        keepalive.timeout()
                    )));
                }
                stop = stopping.wait_for(|stop| *stop), if !closing => {
                    if stop.is_ok() {
                        tracing::debug!(%peer, %identity, "proxy stopping: HBONE connection sent GOAWAY");
                        connection.graceful_shutdown();
                        closing = true;
                    }
                    continue;
                }
                () = open.idle_for(self.idle_timeout), if !closing => {
                    tracing::debug!(%peer, %identity, "HBONE connection idle: closing it");
                    connection.graceful_shutdown();
                    closing = true;
                    continue;
                }
            };
            let Some(next) = next else { break };
            let (request, respond) = match next {
                Ok(stream) => stream,
                Err(e) => return Err(ConnectionError::Other(format!("HTTP/2: {e}"))),
            };
            let tunnel = match read_connect(request) {
                Ok(tunnel) => tunnel,
                Err(status) => {
                    let mut respond = respond;
                    crate::inbound::answer(&mut respond, status);
                    continue;
                }
            };
            let inbound = self.inbound.clone();
            let identity = identity.clone();
            let guard = open.enter();
            // `map`, not an `async move` block awaiting the stream: that
            // would hold the stream's arguments twice in every task.
            tokio::spawn(
                inbound
                    .stream(tunnel, respond, identity, peer)
                    .map(move |()| drop(guard)),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connect_to_a_socket_address_is_read() {
        let read = |method: &str, uri: &str, forwarded: Option<&str>| {
            let mut request = http::Request::builder().method(method).uri(uri);
            if let Some(f) = forwarded {
                request = request.header(super::super::FORWARDED, f);
            }
            let request = request.body(()).unwrap();
            connect_target(request.method(), request.uri(), request.headers())
        };
        assert_eq!(
            read("CONNECT", "10.0.2.5:8080", Some("for=\"10.0.1.7:40000\"")),
            Ok((
                "10.0.2.5:8080".parse().unwrap(),
                Some("for=\"10.0.1.7:40000\"".into())
            ))
        );
        assert_eq!(
            read("CONNECT", "[fd00::5]:80", None),
            Ok(("[fd00::5]:80".parse().unwrap(), None))
        );
        assert_eq!(
            read("GET", "10.0.2.5:8080", None),
            Err(http::StatusCode::METHOD_NOT_ALLOWED)
        );
        for bad in ["backend.shop:8080", "10.0.2.5", "http://10.0.2.5:80/x"] {
            assert_eq!(
                read("CONNECT", bad, None),
                Err(http::StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
    }
}
