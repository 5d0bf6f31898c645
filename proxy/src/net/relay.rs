//! The one relay: copies both ways between a TCP connection and its peer
//! (another TCP connection, or the HTTP/2 stream of an HBONE tunnel) until
//! both directions have ended, or until the connection is revoked.
//!
//! Half-close is honoured in both directions: EOF from one side becomes a
//! TCP shutdown (or END_STREAM) on the other, and the opposite direction
//! goes on. An abort is passed on as one: a TCP reset (or a read or write
//! error) becomes a reset of the HTTP/2 stream (RST_STREAM) or of the
//! other TCP connection, and a reset stream a TCP reset, never a clean
//! EOF that would make a cut-off transfer look complete. A revoked
//! connection is reset too.
//!
//! HTTP/2 flow control is respected: data is sent only within the
//! capacity the peer grants, and received data is released as soon as it
//! is written. Bytes are counted as they are forwarded, so a revoked or
//! failed connection still reports what it carried.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use h2::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Reads adapt to the traffic. A connection holds no read buffer while
/// it waits for data: an idle connection costs its task and its socket,
/// not buffers. A buffer is taken when the socket is readable and given
/// back when it runs dry. Its size is learnt: it starts at `FIRST_READ`,
/// doubles each time a read fills it, up to `MAX_READ` (bulk transfers
/// then cost few system calls and few HTTP/2 frames), and falls back to
/// `FIRST_READ` after a small read.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// The read buffer of one direction, sized by [`FIRST_READ`]/[`MAX_READ`].
#[derive(Debug)]
struct ReadBuffer {
    buf: BytesMut,
    size: usize,
    /// The last read emptied the socket: wait for the poller first.
    drained: bool,
}

impl ReadBuffer {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            size: FIRST_READ,
            drained: false,
        }
    }

    /// Reads what the socket has into `buf` (after what is already
    /// there), waiting until it has something. `Ok(0)` is EOF.
    ///
    /// A poll function, not an `async fn` awaiting `readable()`: that
    /// future (tokio's waiter, 232 bytes with its state) sat in every
    /// open connection's task for each direction that reads TCP; the
    /// socket's own read-readiness slot needs none (one task reads each
    /// socket).
    fn read<'a>(
        &'a mut self,
        reader: &'a TcpStream,
    ) -> impl Future<Output = std::io::Result<usize>> + 'a {
        poll_fn(move |cx| self.poll_read(cx, reader))
    }

    fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        reader: &TcpStream,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            if self.drained {
                self.release();
                std::task::ready!(reader.poll_read_ready(cx))?;
                self.drained = false;
            }
            // `reserve` reclaims the allocation when every chunk split off
            // it has been dropped (usually so: h2 drops a chunk once it is
            // written), and allocates otherwise.
            self.buf.reserve(self.size);
            match read_draining(reader, &mut self.buf) {
                Ok((n, drained)) => {
                    self.drained = drained;
                    if n >= self.size {
                        self.size = (self.size * 2).min(MAX_READ);
                    } else if n < self.size / 4 {
                        self.size = FIRST_READ;
                    }
                    return Poll::Ready(Ok(n));
                }
                // Readiness was stale (`try_io` cleared it): wait.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.drained = true,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Gives the buffer back while the socket has nothing (unless it
    /// still holds bytes not yet passed on).
    fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

/// One read into `buf`'s spare room. A read that leaves room unfilled
/// has drained the socket: its readiness is cleared then, as tokio's own
/// `poll_read` does, so the next read waits for the poller instead of
/// asking the kernel once more only to hear "would block" (one system
/// call fewer per message on a request/response connection).
///
/// `try_read_buf` alone clears readiness only on "would block"; answering
/// that to `try_io` after a short read clears it, and the bytes read are
/// handed back beside. Readiness that arrived after the read is kept
/// (tokio clears only the readiness it had when the read began).
///
/// Returns the bytes read and whether the socket was drained.
fn read_draining(reader: &TcpStream, buf: &mut BytesMut) -> std::io::Result<(usize, bool)> {
    let room = buf.capacity() - buf.len();
    let mut short = None;
    match reader.try_io(tokio::io::Interest::READABLE, || {
        let n = reader.try_read_buf(buf)?;
        if n < room {
            short = Some(n);
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }) {
        Ok(n) => Ok((n, false)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => short.map(|n| (n, true)).ok_or(e),
        Err(e) => Err(e),
    }
}

/// The other end of a relayed TCP connection.
#[derive(Debug)]
pub enum Peer {
    Tcp(TcpStream),
    /// One HTTP/2 stream (an HBONE CONNECT, either side).
    H2 {
        send: SendStream<Bytes>,
        recv: RecvStream,
    },
}

/// Bytes a relay forwarded, seen from its TCP side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Read from the TCP connection and sent to the peer.
    pub from_tcp: u64,
    /// Received from the peer and written to the TCP connection.
    pub to_tcp: u64,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both directions reached EOF.
    Completed,
    /// One side was reset, or reading or writing failed: the other side
    /// was reset in turn.
    Reset,
    /// The revocation future resolved first (a policy update).
    Revoked,
}

impl Ended {
    /// As the access log and spans name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Completed => "completed",
            Ended::Reset => "reset",
            Ended::Revoked => "revoked by policy",
        }
    }
}

/// Relays between `tcp` and `peer` until both directions end or `revoked`
/// resolves (the connection is then dropped: both ends see a reset).
///
/// Built from its parts rather than written as one `async fn`: an async
/// function keeps its arguments for its whole life, so moving them into
/// the futures it awaits would hold them twice. Every open connection's
/// task holds this future; see docs/benchmarks.md.
pub fn relay(
    tcp: TcpStream,
    peer: Peer,
    revoked: impl Future<Output = ()>,
) -> impl Future<Output = (Transferred, Ended)> {
    let counts = Arc::new(Counts::default());
    UntilRevoked {
        copy: copy_both(tcp, peer, counts.clone()),
        revoked,
    }
    .map(move |ended| {
        let transferred = Transferred {
            from_tcp: counts.from_tcp.load(Ordering::Relaxed),
            to_tcp: counts.to_tcp.load(Ordering::Relaxed),
        };
        (transferred, ended)
    })
}

/// Bytes forwarded so far each way: read when the relay ends, also when
/// it is revoked mid-way.
#[derive(Debug, Default)]
struct Counts {
    from_tcp: AtomicU64,
    to_tcp: AtomicU64,
}

/// A direction that ended on a reset or an error rather than EOF.
#[derive(Debug)]
struct Aborted;

/// A relayed socket that is reset (`SO_LINGER` 0) when dropped, unless the
/// relay ended cleanly: dropped after an abort, a revocation or a cancelled
/// task, its peer sees a reset, not an EOF.
struct ResetUnlessClean {
    stream: TcpStream,
    clean: bool,
}

impl ResetUnlessClean {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            clean: false,
        }
    }
}

impl Drop for ResetUnlessClean {
    fn drop(&mut self) {
        if !self.clean {
            let _ = self.stream.set_zero_linger();
        }
    }
}

/// Both directions, until both reach EOF or either aborts (the other is
/// then dropped mid-way: the sockets are reset, the HTTP/2 stream is reset
/// by h2 when its handles go).
async fn copy_both(tcp: TcpStream, peer: Peer, counts: Arc<Counts>) -> Ended {
    let mut tcp = ResetUnlessClean::new(tcp);
    let (reader, writer) = tcp.stream.split();
    let outcome = match peer {
        Peer::Tcp(upstream) => {
            let mut upstream = ResetUnlessClean::new(upstream);
            let (up_reader, up_writer) = upstream.stream.split();
            let outcome = tokio::try_join!(
                copy_tcp(reader, up_writer, &counts.from_tcp),
                copy_tcp(up_reader, writer, &counts.to_tcp),
            );
            upstream.clean = outcome.is_ok();
            outcome
        }
        Peer::H2 { send, recv } => tokio::try_join!(
            tcp_to_h2(reader, send, &counts.from_tcp),
            h2_to_tcp(recv, writer, &counts.to_tcp),
        ),
    };
    tcp.clean = outcome.is_ok();
    match outcome {
        Ok(_) => Ended::Completed,
        Err(Aborted) => Ended::Reset,
    }
}

pin_project_lite::pin_project! {
    /// `copy` until it ends or `revoked` resolves, whichever is first.
    struct UntilRevoked<C, R> {
        #[pin]
        copy: C,
        #[pin]
        revoked: R,
    }
}

impl<C: Future<Output = Ended>, R: Future<Output = ()>> Future for UntilRevoked<C, R> {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.project();
        if let Poll::Ready(ended) = this.copy.poll(cx) {
            return Poll::Ready(ended);
        }
        if this.revoked.poll(cx).is_ready() {
            return Poll::Ready(Ended::Revoked);
        }
        Poll::Pending
    }
}

/// One direction between two sockets: EOF shuts the writer down; a read
/// or write error aborts (both sockets are then reset).
async fn copy_tcp(
    reader: ReadHalf<'_>,
    mut writer: WriteHalf<'_>,
    count: &AtomicU64,
) -> Result<(), Aborted> {
    let mut buffer = ReadBuffer::new();
    loop {
        let n = buffer.read(reader.as_ref()).await.map_err(|_| Aborted)?;
        if n == 0 {
            // The write side may already be gone (the peer reset): then
            // this direction has nothing left to finish either.
            return writer.shutdown().await.map_err(|_| Aborted);
        }
        writer.write_all(&buffer.buf).await.map_err(|_| Aborted)?;
        buffer.buf.clear();
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Whether an HTTP/2 error ends a stream gracefully: a reset with
/// NO_ERROR is how a peer that has answered in full says it wants no more
/// (RFC 9113, section 8.1).
fn graceful(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::NO_ERROR)
}

/// TCP to an HTTP/2 stream: EOF becomes END_STREAM, a read error a reset
/// (CANCEL). Each read is split off and handed to h2 as is (no copy).
async fn tcp_to_h2(
    reader: ReadHalf<'_>,
    mut send: SendStream<Bytes>,
    count: &AtomicU64,
) -> Result<(), Aborted> {
    let mut buffer = ReadBuffer::new();
    loop {
        match buffer.read(reader.as_ref()).await {
            Ok(0) => {
                return match send.send_data(Bytes::new(), true) {
                    Err(e) if !graceful(&e) => Err(Aborted),
                    _ => Ok(()),
                };
            }
            Ok(_) => {}
            Err(_) => {
                send.send_reset(h2::Reason::CANCEL);
                return Err(Aborted);
            }
        }
        let mut chunk = buffer.buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let sent = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(capacity)) => {
                    let part = chunk.split_to(capacity.min(chunk.len()));
                    let n = part.len() as u64;
                    send.send_data(part, false).map(|()| n)
                }
                Some(Err(e)) => Err(e),
                // The stream closed for sending without an error.
                None => return Ok(()),
            };
            match sent {
                Ok(n) => count.fetch_add(n, Ordering::Relaxed),
                Err(e) if graceful(&e) => return Ok(()),
                Err(_) => return Err(Aborted),
            };
        }
    }
}

/// An HTTP/2 stream to TCP: END_STREAM shuts the TCP write side down; a
/// reset stream aborts (the TCP connection is reset).
async fn h2_to_tcp(
    mut recv: RecvStream,
    mut writer: WriteHalf<'_>,
    count: &AtomicU64,
) -> Result<(), Aborted> {
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                let n = data.len();
                writer.write_all(&data).await.map_err(|_| Aborted)?;
                let _ = recv.flow_control().release_capacity(n);
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            Some(Err(e)) if !graceful(&e) => return Err(Aborted),
            Some(Err(_)) | None => return writer.shutdown().await.map_err(|_| Aborted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn reads_grow_while_they_fill_the_buffer_and_idle_holds_none() {
        // A send buffer big enough that the whole burst is written at once.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(1 << 20).unwrap();
        let mut client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (reader, _) = listener.accept().await.unwrap();
        let burst = FIRST_READ + 2 * FIRST_READ + 4 * FIRST_READ;
        client.write_all(&vec![7u8; burst]).await.unwrap();
        let mut buffer = ReadBuffer::new();
        let mut reads = Vec::new();
        let mut total = 0;
        while total < burst {
            let n = buffer.read(&reader).await.unwrap();
            assert!(buffer.buf.iter().all(|b| *b == 7));
            buffer.buf.clear();
            reads.push(n);
            total += n;
        }
        // Each read was at most the learnt size, and a full one doubled it.
        assert_eq!(reads[0], FIRST_READ, "{reads:?}");
        assert!(buffer.size > FIRST_READ, "{reads:?}");
        // Idle: the next read waits holding no buffer, then a small read
        // brings the size back down.
        let idle = tokio::spawn(async move {
            let n = buffer.read(&reader).await.unwrap();
            (n, buffer.size)
        });
        tokio::task::yield_now().await;
        client.write_all(b"ping").await.unwrap();
        let (n, size) = idle.await.unwrap();
        assert_eq!((n, size), (4, FIRST_READ));
    }

    #[tokio::test]
    async fn a_short_read_marks_the_socket_drained_and_later_bytes_still_arrive() {
        let (mut client, proxied) = pair().await;
        let reader = &proxied;
        let mut buffer = ReadBuffer::new();
        for round in 0..3u8 {
            client.write_all(&[round; 10]).await.unwrap();
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), buffer.read(reader))
                .await
                .expect("bytes written after a drained read are read")
                .unwrap();
            assert_eq!((n, &buffer.buf[..]), (10, &[round; 10][..]));
            // Short: the socket is known empty, its readiness cleared.
            assert!(buffer.drained);
            buffer.buf.clear();
        }
        // A read that fills the room is not taken as drained.
        let mut full = BytesMut::with_capacity(4);
        client.write_all(&[9; 8]).await.unwrap();
        reader.readable().await.unwrap();
        let room = full.capacity();
        let (n, drained) = read_draining(reader, &mut full).unwrap();
        assert_eq!((n, drained), (room, false));
        drop(client);
        let mut rest = BytesMut::with_capacity(64);
        reader.readable().await.unwrap();
        let (n, drained) = read_draining(reader, &mut rest).unwrap();
        assert_eq!((n, drained), (8 - room, true));
    }

    #[tokio::test]
    async fn an_idle_reader_gives_its_buffer_back() {
        let (mut client, proxied) = pair().await;
        let reader = &proxied;
        client.write_all(b"hello").await.unwrap();
        let mut buffer = ReadBuffer::new();
        assert_eq!(buffer.read(reader).await.unwrap(), 5);
        buffer.buf.clear();
        assert!(buffer.buf.capacity() >= FIRST_READ);
        // Nothing more to read: the buffer is released before waiting.
        {
            let waiting = buffer.read(reader);
            tokio::pin!(waiting);
            assert!(futures::poll!(waiting.as_mut()).is_pending());
        }
        assert_eq!(buffer.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn tcp_relay_counts_each_direction_and_keeps_half_close() {
        let (mut client, proxied) = pair().await;
        let (upstream, mut server) = pair().await;
        let relay = tokio::spawn(relay(proxied, Peer::Tcp(upstream), std::future::pending()));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // The other direction still flows after the client's half-close.
        server.write_all(b"world!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let (transferred, ended) = relay.await.unwrap();
        assert_eq!(ended, Ended::Completed);
        assert_eq!(
            transferred,
            Transferred {
                from_tcp: 5,
                to_tcp: 6
            }
        );
    }

    #[tokio::test]
    async fn a_revoked_relay_reports_what_it_carried() {
        let (mut client, proxied) = pair().await;
        let (upstream, mut server) = pair().await;
        let revoke = std::sync::Arc::new(tokio::sync::Notify::new());
        let revoked = {
            let revoke = revoke.clone();
            async move { revoke.notified().await }
        };
        let relay = tokio::spawn(relay(proxied, Peer::Tcp(upstream), revoked));
        client.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        revoke.notify_one();
        let (transferred, ended) = relay.await.unwrap();
        assert_eq!(ended, Ended::Revoked);
        assert_eq!(transferred.from_tcp, 3);
        // Both ends are reset, not closed as if the transfer were whole.
        let mut rest = Vec::new();
        assert_reset(server.read_to_end(&mut rest).await);
        assert_reset(client.read_to_end(&mut rest).await);
    }

    /// A read that ended in a reset, not in EOF.
    fn assert_reset(read: std::io::Result<usize>) {
        match read {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => panic!("EOF after {n} bytes, where a reset was due"),
        }
    }

    #[tokio::test]
    async fn a_reset_upstream_resets_the_client_and_eof_stays_clean() {
        // Reset: the server aborts mid-answer.
        let (mut client, proxied) = pair().await;
        let (upstream, server) = pair().await;
        let task = tokio::spawn(relay(proxied, Peer::Tcp(upstream), std::future::pending()));
        let mut server = server;
        server.write_all(b"partial").await.unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        server.set_zero_linger().unwrap();
        drop(server);
        let mut rest = Vec::new();
        assert_reset(client.read_to_end(&mut rest).await);
        assert_eq!(task.await.unwrap().1, Ended::Reset);

        // EOF both ways: a clean close, every byte delivered.
        let (mut client, proxied) = pair().await;
        let (upstream, mut server) = pair().await;
        let task = tokio::spawn(relay(proxied, Peer::Tcp(upstream), std::future::pending()));
        server.write_all(&[7u8; 300_000]).await.unwrap();
        drop(server);
        client.shutdown().await.unwrap();
        let mut all = Vec::new();
        assert_eq!(client.read_to_end(&mut all).await.unwrap(), 300_000);
        assert_eq!(task.await.unwrap().1, Ended::Completed);
    }

    /// An HTTP/2 stream relayed to `proxied`: the relay's task and the
    /// server's end of the stream (its request body and its respond handle).
    async fn h2_relay(
        proxied: TcpStream,
    ) -> (
        tokio::task::JoinHandle<(Transferred, Ended)>,
        RecvStream,
        SendStream<Bytes>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, server) = (client.unwrap(), server.unwrap().0);
        let (server, client) =
            tokio::join!(h2::server::handshake(server), h2::client::handshake(client));
        let (mut sender, connection) = client.unwrap();
        tokio::spawn(connection);
        let mut server: h2::server::Connection<TcpStream, Bytes> = server.unwrap();
        let request = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap();
        let (response, send) = sender.send_request(request, false).unwrap();
        let (request, mut respond) = server.accept().await.unwrap().unwrap();
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        let server_send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        let recv = response.await.unwrap().into_body();
        let relay = tokio::spawn(relay(
            proxied,
            Peer::H2 { send, recv },
            std::future::pending(),
        ));
        (relay, request.into_body(), server_send)
    }

    #[tokio::test]
    async fn a_reset_stream_resets_the_tcp_connection() {
        let (mut client, proxied) = pair().await;
        let (relay, _body, mut server_send) = h2_relay(proxied).await;
        server_send
            .send_data(Bytes::from_static(b"partial"), false)
            .unwrap();
        let mut got = [0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        server_send.send_reset(h2::Reason::INTERNAL_ERROR);
        let mut rest = Vec::new();
        assert_reset(client.read_to_end(&mut rest).await);
        assert_eq!(relay.await.unwrap().1, Ended::Reset);
    }

    #[tokio::test]
    async fn a_reset_tcp_connection_resets_the_stream() {
        let (client, proxied) = pair().await;
        let (relay, mut body, _server_send) = h2_relay(proxied).await;
        let mut client = client;
        client.write_all(b"partial").await.unwrap();
        assert_eq!(&body.data().await.unwrap().unwrap()[..], b"partial");
        client.set_zero_linger().unwrap();
        drop(client);
        match body.data().await {
            Some(Err(e)) => assert_eq!(e.reason(), Some(h2::Reason::CANCEL), "{e}"),
            other => panic!("the stream ended with {other:?}, where a reset was due"),
        }
        assert_eq!(relay.await.unwrap().1, Ended::Reset);
    }

    #[tokio::test]
    async fn end_stream_and_eof_close_an_h2_relay_cleanly() {
        let (mut client, proxied) = pair().await;
        let (relay, mut body, mut server_send) = h2_relay(proxied).await;
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut up = Vec::new();
        while let Some(chunk) = body.data().await {
            up.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(up, b"ping");
        server_send
            .send_data(Bytes::from_static(b"pong"), true)
            .unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong");
        assert_eq!(relay.await.unwrap().1, Ended::Completed);
    }
}
