//! The HBONE client: pooled mutual-TLS HTTP/2 connections to other node
//! proxies, one CONNECT stream per proxied connection.
//!
//! Connections are pooled per (source identity, destination identity,
//! destination node): a new pod-to-pod connection costs one stream, not a
//! handshake. The destination identity is part of the key because the
//! server proves it in the TLS handshake. A connection carries at most
//! `max_streams` concurrent streams; past that a new one is opened.
//! Opening is single-flight: connections that miss the pool at the same
//! time wait for one handshake per key instead of each starting its own,
//! and share its failure too (a dead peer costs them one timeout, not one
//! each in turn). A pooled connection that can take no new stream (the
//! peer sent GOAWAY: it is stopping or handing over) is dropped from the
//! pool at the first refusal, and the stream is opened on a fresh one.
//!
//! A pooled connection is watched by its own task: an HTTP/2 PING every
//! `keepalive_interval` must be answered within `keepalive_timeout`, or the
//! connection is taken for dead and dropped from the pool (a peer proxy
//! that froze would otherwise hang every new stream); one without streams
//! for `idle` is closed. The CONNECT reply has a deadline too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use ferry_api::identity::Identity;
use h2::{RecvStream, SendStream};
use serde::Serialize;

use super::{H2Settings, Keepalive, TunnelError, FORWARDED, TRACEPARENT};
use crate::identity::IdentityManager;
use crate::outbound::early::EarlyData;

/// Pool key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub destination: Identity,
    pub node: SocketAddr,
}

#[derive(Debug)]
struct PooledConnection {
    sender: h2::client::SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
}

/// What a checkout hands out: a connection's sender, the stream's slot
/// on it, and the connection's `closed` flag (set when it refuses streams).
type Checkout = (h2::client::SendRequest<Bytes>, StreamSlot, Arc<AtomicBool>);

/// The lock of a key being opened, with the last open's failure: callers
/// that waited on that open take its answer.
#[derive(Debug, Default)]
struct Opening {
    failed: Option<(Instant, Arc<TunnelError>)>,
}

/// A caller's hold on a key's [`Opening`] lock. The last one out removes
/// the lock from the pool, also when its checkout is cancelled midway.
struct OpeningLock<'a>(Arc<tokio::sync::Mutex<Opening>>, &'a HbonePool, &'a PoolKey);

impl<'a> OpeningLock<'a> {
    fn take(pool: &'a HbonePool, key: &'a PoolKey) -> Self {
        let lock = pool.opening.entry(key.clone()).or_default().clone();
        Self(lock, pool, key)
    }
}

impl Drop for OpeningLock<'_> {
    fn drop(&mut self) {
        // The map holds one reference and this hold another.
        self.1.opening.remove_if(self.2, |_, l| {
            Arc::strong_count(l) <= 2 && Arc::ptr_eq(l, &self.0)
        });
    }
}

/// Counts a stream against its connection until dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open HBONE stream.
#[derive(Debug)]
pub struct HboneStream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub slot: StreamSlot,
}

/// Pool statistics for `/config_dump` and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PoolStats {
    pub connections: usize,
    pub streams: usize,
    pub handshakes: usize,
}

/// Timeouts of the HBONE client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTimeouts {
    /// TCP connect to the peer proxy, and the wait for a CONNECT reply.
    pub connect: Duration,
    /// The TLS and HTTP/2 handshakes with the peer proxy.
    pub handshake: Duration,
    /// How long a new connection waits for its source identity's first
    /// certificate (a pod that has just started).
    pub certificate: Duration,
    /// How often a pooled connection is PINGed...
    pub keepalive_interval: Duration,
    /// ...and how long the PONG may take before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// A pooled connection without streams for this long is closed.
    pub idle: Duration,
}

/// The HBONE client: pooled mTLS HTTP/2 connections to other node proxies.
#[derive(Debug)]
pub struct HbonePool {
    connections: DashMap<PoolKey, Vec<PooledConnection>>,
    /// One lock per key being opened: single-flight handshakes.
    opening: DashMap<PoolKey, Arc<tokio::sync::Mutex<Opening>>>,
    identities: Arc<IdentityManager>,
    settings: H2Settings,
    timeouts: PoolTimeouts,
    handshakes: AtomicUsize,
}

impl HbonePool {
    pub fn new(
        identities: Arc<IdentityManager>,
        settings: H2Settings,
        timeouts: PoolTimeouts,
    ) -> Self {
        Self {
            connections: DashMap::new(),
            opening: DashMap::new(),
            identities,
            settings: H2Settings {
                max_streams: settings.max_streams.max(1),
                ..settings
            },
            timeouts,
            handshakes: AtomicUsize::new(0),
        }
    }

    pub fn stats(&self) -> PoolStats {
        let mut stats = PoolStats {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            ..PoolStats::default()
        };
        for entry in self.connections.iter() {
            for c in entry
                .value()
                .iter()
                .filter(|c| !c.closed.load(Ordering::Acquire))
            {
                stats.connections += 1;
                stats.streams += c.streams.load(Ordering::Acquire);
            }
        }
        stats
    }

    /// A pooled connection with a free stream slot, if any.
    fn reuse(&self, key: &PoolKey) -> Option<Checkout> {
        let mut entry = self.connections.get_mut(key)?;
        entry.retain(|c| !c.closed.load(Ordering::Acquire));
        for c in entry.iter() {
            // Ours, or the peer's if lower (its SETTINGS_MAX_CONCURRENT_STREAMS:
            // a peer configured otherwise, during a rollout): past it a
            // stream would wait in `ready()` instead of going to a new
            // connection.
            let limit =
                (self.settings.max_streams as usize).min(c.sender.current_max_send_streams());
            let taken = c.streams.fetch_add(1, Ordering::AcqRel);
            if taken < limit {
                return Some((
                    c.sender.clone(),
                    StreamSlot(c.streams.clone()),
                    c.closed.clone(),
                ));
            }
            c.streams.fetch_sub(1, Ordering::AcqRel);
        }
        None
    }

    /// A stream slot on a pooled connection, opening one if none is free.
    /// Callers that miss at the same time queue on the key's lock: the
    /// first opens, the others then find its connection, or its failure.
    async fn checkout(&self, key: &PoolKey) -> Result<Checkout, TunnelError> {
        if let Some(found) = self.reuse(key) {
            return Ok(found);
        }
        let asked = Instant::now();
        let lock = OpeningLock::take(self, key);
        let opened = {
            let mut opening = lock.0.lock().await;
            match (self.reuse(key), &opening.failed) {
                (Some(found), _) => Ok(found),
                // The open this caller waited for failed: so does this
                // caller, at once, rather than trying the same dead peer
                // again after everyone queued before it.
                (None, Some((at, error))) if *at >= asked => {
                    Err(TunnelError::Shared(error.clone()))
                }
                (None, _) => match self.open(key).await {
                    Ok(opened) => {
                        opening.failed = None;
                        Ok(opened)
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        opening.failed = Some((Instant::now(), e.clone()));
                        Err(TunnelError::Shared(e))
                    }
                },
            }
        };
        opened
    }

    async fn open(&self, key: &PoolKey) -> Result<Checkout, TunnelError> {
        let source_cert = self
            .identities
            .wait_certified(&key.source, self.timeouts.certificate)
            .await
            .ok_or_else(|| TunnelError::NoCertificate(key.source.clone()))?;
        let config = crate::identity::tls::client_config(
            self.identities.roots(),
            source_cert,
            key.destination.clone(),
        )?;
        let tcp = crate::net::connect::connect(key.node, self.timeouts.connect).await?;
        let server_name = rustls::pki_types::ServerName::try_from(key.destination.server_name())
            .map_err(|e| TunnelError::Tls {
                node: key.node,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?
            .to_owned();
        let tls = tokio::time::timeout(
            self.timeouts.handshake,
            super::record::connect(
                Arc::new(config),
                server_name,
                tcp,
                self.settings.tls_send_buffer,
            ),
        )
        .await
        .map_err(|_| TunnelError::Timeout(key.node))?
        .map_err(|e| TunnelError::Tls {
            node: key.node,
            source: e.into(),
        })?;
        let (sender, connection) = tokio::time::timeout(
            self.timeouts.handshake,
            self.settings.client().handshake::<_, Bytes>(tls.stream),
        )
        .await
        .map_err(|_| TunnelError::Timeout(key.node))??;
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(source = %key.source, destination = %key.destination, node = %key.node, "HBONE connection established");
        Ok(self.adopt(key, sender, connection))
    }

    /// Pools a connection that has done its handshakes, watched by its
    /// own task ([`watch_connection`]), and takes its first stream slot.
    fn adopt<T>(
        &self,
        key: &PoolKey,
        sender: h2::client::SendRequest<Bytes>,
        connection: h2::client::Connection<T, Bytes>,
    ) -> Checkout
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let closed = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(AtomicUsize::new(1));
        tokio::spawn(watch_connection(
            connection,
            key.node,
            streams.clone(),
            closed.clone(),
            self.timeouts,
        ));
        // Opening is rare: a good time to forget connections that ended
        // under keys nobody uses any more.
        self.connections.retain(|_, list| {
            list.retain(|c| !c.closed.load(Ordering::Acquire));
            !list.is_empty()
        });
        self.connections
            .entry(key.clone())
            .or_default()
            .push(PooledConnection {
                sender: sender.clone(),
                streams: streams.clone(),
                closed: closed.clone(),
            });
        (sender, StreamSlot(streams), closed)
    }

    /// Opens a stream to `target` (a pod address on the destination node),
    /// with the W3C `traceparent` of the connection's span when tracing.
    /// With `early`, the client's first bytes go out behind the CONNECT
    /// while its answer is awaited ([`EarlyData`]).
    pub async fn connect(
        &self,
        key: &PoolKey,
        target: SocketAddr,
        client: SocketAddr,
        traceparent: Option<http::HeaderValue>,
        early: Option<&mut EarlyData<'_>>,
    ) -> Result<HboneStream, TunnelError> {
        let mut retried = false;
        let (mut sender, slot) = loop {
            let (sender, slot, closed) = self.checkout(key).await?;
            match tokio::time::timeout(self.timeouts.connect, sender.ready()).await {
                Err(_) => return Err(TunnelError::Timeout(key.node)),
                Ok(Ok(sender)) => break (sender, slot),
                // The connection takes no new stream: the peer sent GOAWAY
                // (it is stopping, or handing over to its successor) or the
                // connection failed. It leaves the pool now, not when its
                // last stream ends, and the stream goes on a fresh one.
                Ok(Err(e)) => {
                    closed.store(true, Ordering::Release);
                    if retried {
                        return Err(e.into());
                    }
                    tracing::debug!(node = %key.node, error = %e, "pooled HBONE connection takes no new stream: opening another");
                    retried = true;
                }
            }
        };
        let mut request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(target.to_string())
            .header(FORWARDED, format!("for=\"{client}\""))
            .body(())?;
        if let Some(value) = traceparent {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let (response, mut send) = sender.send_request(request, false)?;
        let answer = async {
            match early {
                Some(early) => early.send_while_answering(&mut send, response).await,
                None => response.await,
            }
        };
        let response = tokio::time::timeout(self.timeouts.connect, answer)
            .await
            .map_err(|_| TunnelError::Timeout(key.node))??;
        if response.status() != http::StatusCode::OK {
            return Err(TunnelError::Refused {
                status: response.status(),
            });
        }
        Ok(HboneStream {
            send,
            recv: response.into_body(),
            slot,
        })
    }
}

/// The stream count of a connection claimed for closing: far above any
/// stream limit, so [`HbonePool`]'s checkout never takes a slot on it.
const CLAIMED: usize = usize::MAX / 2;

/// Drives one pooled connection until it ends, is found dead (a PING
/// unanswered for `keepalive_timeout`), or has had no stream for `idle`;
/// then marks it closed so the pool stops handing it out. Dropping the
/// connection closes it.
async fn watch_connection<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    node: SocketAddr,
    streams: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    timeouts: PoolTimeouts,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut keepalive = Keepalive::new(
        connection.ping_pong(),
        timeouts.keepalive_interval,
        timeouts.keepalive_timeout,
    );
    let mut tick = tokio::time::interval(timeouts.keepalive_interval.min(timeouts.idle));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(%node, error = %e, "HBONE connection ended");
                }
                break;
            }
            () = keepalive.dead() => {
                tracing::warn!(%node, timeout = ?keepalive.timeout(), "peer proxy did not answer a keepalive PING: HBONE connection dropped");
                break;
            }
            _ = tick.tick() => {
                if streams.load(Ordering::Acquire) == 0 {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    // Claim the connection atomically: a checkout racing
                    // with this sees it full and opens or picks another.
                    if since.elapsed() >= timeouts.idle
                        && streams
                            .compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        tracing::debug!(%node, "HBONE connection idle: closed");
                        break;
                    }
                } else {
                    idle_since = None;
                }
            }
        }
    }
    closed.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::CertificateSettings;

    /// A pool whose identities have no CA: a fresh connection fails on its
    /// source certificate after `certificate`.
    fn pool() -> HbonePool {
        let identities = IdentityManager::new(
            "node-a",
            "cluster.local",
            rustls::RootCertStore::empty(),
            None,
            CertificateSettings::for_tests(),
        );
        let second = Duration::from_secs(1);
        HbonePool::new(
            identities,
            H2Settings::default(),
            PoolTimeouts {
                connect: second,
                handshake: second,
                certificate: Duration::from_millis(50),
                keepalive_interval: 60 * second,
                keepalive_timeout: 10 * second,
                idle: 60 * second,
            },
        )
    }

    fn key() -> PoolKey {
        PoolKey {
            source: Identity::new("cluster.local", "shop", "frontend"),
            destination: Identity::new("cluster.local", "shop", "backend"),
            node: "127.0.0.1:15008".parse().unwrap(),
        }
    }

    /// Pools a connection over `client_io` and opens one stream on it,
    /// answered by the peer: the stream's slot and handles, to keep it open.
    async fn adopt_with_a_stream(
        pool: &HbonePool,
        key: &PoolKey,
        client_io: tokio::io::DuplexStream,
    ) -> (StreamSlot, SendStream<Bytes>, http::Response<RecvStream>) {
        let (sender, connection) = h2::client::handshake(client_io).await.unwrap();
        let (sender, slot, _closed) = pool.adopt(key, sender, connection);
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap();
        let (response, send) = sender
            .ready()
            .await
            .unwrap()
            .send_request(request, false)
            .unwrap();
        (slot, send, response.await.unwrap())
    }

    #[tokio::test]
    async fn a_connection_that_got_goaway_leaves_the_pool_and_the_stream_goes_to_a_new_one() {
        let pool = pool();
        let key = key();
        // A pooled connection to a peer that keeps one stream open and
        // then sends GOAWAY, as a proxy handing over does.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (goaway_sent, goaway) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut connection = h2::server::handshake(server_io).await.unwrap();
            let (_request, mut respond) = connection.accept().await.unwrap().unwrap();
            let _open = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            connection.graceful_shutdown();
            let _ = goaway_sent.send(());
            while connection.accept().await.is_some() {}
        });
        let _open = adopt_with_a_stream(&pool, &key, client_io).await;
        goaway.await.unwrap();
        // The client has read the GOAWAY once the connection refuses streams.
        let probe = pool.connections.get(&key).unwrap()[0].sender.clone();
        tokio::time::timeout(Duration::from_secs(5), async {
            while probe.clone().ready().await.is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(pool.stats().connections, 1);

        // The next stream does not fail on it: the connection leaves the
        // pool and a new one is opened (which, without a CA here, fails on
        // the source certificate).
        let target = "10.0.0.1:80".parse().unwrap();
        let client = "10.0.0.2:4000".parse().unwrap();
        let failed = pool
            .connect(&key, target, client, None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(failed.root(), TunnelError::NoCertificate(_)),
            "{failed}"
        );
        assert_eq!(pool.stats().connections, 0);
    }

    #[tokio::test]
    async fn a_peer_allowing_fewer_streams_gets_a_second_connection_sooner() {
        let pool = pool();
        let key = key();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut connection = h2::server::Builder::new()
                .max_concurrent_streams(1)
                .handshake::<_, Bytes>(server_io)
                .await
                .unwrap();
            let (_request, mut respond) = connection.accept().await.unwrap().unwrap();
            let _open = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            while connection.accept().await.is_some() {}
        });
        let _open = adopt_with_a_stream(&pool, &key, client_io).await;
        // Its one stream is taken: the next one needs another connection.
        assert!(pool.reuse(&key).is_none());
    }

    /// On tokio's clock, paused: it moves only to the next timer, so the
    /// time the callers took is exactly the certificate waits they made.
    #[tokio::test(start_paused = true)]
    async fn callers_waiting_on_a_failed_open_share_its_failure() {
        let pool = Arc::new(pool());
        let key = key();
        let started = tokio::time::Instant::now();
        let target = "10.0.0.1:80".parse().unwrap();
        let client = "10.0.0.2:4000".parse().unwrap();
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                let key = key.clone();
                tokio::spawn(async move { pool.connect(&key, target, client, None, None).await })
            })
            .collect();
        for caller in callers {
            let failed = caller.await.unwrap().unwrap_err();
            assert!(
                matches!(failed.root(), TunnelError::NoCertificate(_)),
                "{failed}"
            );
        }
        // One certificate wait (50 ms) for all eight, not one each in turn.
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        // The last one out took the key's lock away.
        assert!(pool.opening.is_empty());
        // So does a checkout cancelled while it waits.
        let waiting = pool.connect(&key, target, client, None, None);
        assert!(tokio::time::timeout(Duration::from_millis(10), waiting)
            .await
            .is_err());
        assert!(pool.opening.is_empty());
    }
}
