//! A client's first bytes, sent behind the CONNECT instead of after its
//! answer.
//!
//! An HBONE stream is open for data as soon as its CONNECT request is
//! sent; the destination's proxy answers once it has decided and reached
//! the pod. While the source proxy waits for that answer, what the client
//! has already sent (one read, at most [`EARLY_BYTES`]) goes out on the
//! stream: the destination's proxy holds it in the stream's flow-control
//! window and passes it to the pod only once it has admitted the
//! connection, so nothing reaches a pod that policy refuses. A request /
//! response protocol's first request then reaches the pod a round trip
//! through both proxies sooner (docs/benchmarks.md).
//!
//! The bytes are kept until the answer: when it is a refusal and the
//! outbound path retries on another endpoint, they are sent again there
//! (on its stream, or written to its TCP connection) before the relay
//! goes on with the rest, so a retry loses nothing.
//!
//! The one case where a retry can deliver them twice: the destination's
//! proxy admitted the connection and passed them to its pod, and then its
//! answer never arrived (the network between the nodes broke after it
//! left). The source proxy cannot tell that from a destination proxy that
//! froze before answering, where the retry is what keeps the connection
//! alive (the fault suite's "destination proxy frozen"); it retries, as a
//! client whose connection timed out would. docs/reliability.md says so.

use bytes::{Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// At most this much is read from the client before the answer (one
/// read; the rest follows in the relay).
pub const EARLY_BYTES: usize = 16 * 1024;

/// The early bytes of one client connection (see the module doc).
#[derive(Debug)]
pub struct EarlyData<'c> {
    client: &'c TcpStream,
    /// Read from the client, kept until an upstream has answered for them.
    sent: Option<Bytes>,
    /// Nothing more is read early: one read was made, or the client had
    /// ended (its EOF is left for the relay to read again).
    finished: bool,
}

impl<'c> EarlyData<'c> {
    pub fn new(client: &'c TcpStream) -> Self {
        Self {
            client,
            sent: None,
            finished: false,
        }
    }

    /// Bytes of the client's that its upstream has been given (they are
    /// part of what the connection carried).
    pub fn len(&self) -> u64 {
        self.sent.as_ref().map_or(0, |b| b.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for `response` (a CONNECT just sent on `send`), sending the
    /// client's first bytes meanwhile: again if an earlier attempt read
    /// them, else as soon as the client has some.
    pub async fn send_while_answering(
        &mut self,
        send: &mut SendStream<Bytes>,
        response: ResponseFuture,
    ) -> Result<http::Response<RecvStream>, h2::Error> {
        if let Some(sent) = &self.sent {
            send.send_data(sent.clone(), false)?;
        }
        let mut response = std::pin::pin!(response);
        let client = self.client;
        while !self.finished {
            tokio::select! {
                biased;
                answer = &mut response => return answer,
                readable = client.readable() => {
                    if readable.is_err() {
                        self.finished = true;
                        break;
                    }
                    let mut buf = BytesMut::with_capacity(EARLY_BYTES);
                    match client.try_read_buf(&mut buf) {
                        Ok(0) => self.finished = true,
                        Ok(_) => {
                            // Kept before sending: a send that fails (the
                            // stream reset by a refusing peer) leaves them
                            // for the retry.
                            let bytes = buf.freeze();
                            self.sent = Some(bytes.clone());
                            self.finished = true;
                            send.send_data(bytes, false)?;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        // A failing client is the relay's to find out.
                        Err(_) => self.finished = true,
                    }
                }
            }
        }
        response.await
    }

    /// Writes the bytes an earlier attempt sent to `upstream` (a retry
    /// that ends on a plain TCP connection).
    pub async fn replay(&self, upstream: &mut TcpStream) -> std::io::Result<()> {
        match &self.sent {
            Some(sent) => upstream.write_all(sent).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// An HTTP/2 client and server over a loopback TCP pair, the server's
    /// connection driven in the background.
    async fn h2_pair() -> (
        h2::client::SendRequest<Bytes>,
        h2::server::Connection<TcpStream, Bytes>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, server) = (client.unwrap(), server.unwrap().0);
        let (server, client) =
            tokio::join!(h2::server::handshake(server), h2::client::handshake(client));
        let (sender, connection) = client.unwrap();
        tokio::spawn(connection);
        (sender, server.unwrap())
    }

    /// A client socket (`app`) and the proxy's end of it (`proxied`).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (proxied, _) = listener.accept().await.unwrap();
        (app, proxied)
    }

    fn connect_request() -> http::Request<()> {
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap()
    }

    #[tokio::test]
    async fn the_first_bytes_reach_the_server_before_it_answers_and_are_kept_for_a_retry() {
        let (mut app, proxied) = tcp_pair().await;
        let (mut sender, mut server) = h2_pair().await;
        app.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        // The server reads the body before answering: it answers only once
        // the early bytes are there, so the client's wait ends only if they
        // were sent ahead of the answer. It refuses, as a destination proxy
        // whose pod is gone would.
        let (seen, first) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (request, mut respond) = server.accept().await.unwrap().unwrap();
            let mut body = request.into_body();
            let _ = seen.send(body.data().await.unwrap().unwrap());
            respond
                .send_response(
                    http::Response::builder().status(503).body(()).unwrap(),
                    true,
                )
                .unwrap();
            // Drive the connection until the client closes it.
            while server.accept().await.is_some() {}
        });
        let mut early = EarlyData::new(&proxied);
        sender = sender.ready().await.unwrap();
        let (response, mut send) = sender.send_request(connect_request(), false).unwrap();
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            early.send_while_answering(&mut send, response),
        )
        .await
        .expect("answered once the early bytes arrived")
        .unwrap();
        assert_eq!(answer.status(), 503);
        assert_eq!(&first.await.unwrap()[..], b"GET / HTTP/1.1\r\n\r\n");
        // Kept for the retry: replayed to a plain upstream, and nothing
        // more was taken from the client than that one read.
        assert_eq!(early.len(), 18);
        let (mut upstream_end, mut upstream) = tcp_pair().await;
        early.replay(&mut upstream).await.unwrap();
        let mut replayed = [0u8; 18];
        upstream_end.read_exact(&mut replayed).await.unwrap();
        assert_eq!(&replayed, b"GET / HTTP/1.1\r\n\r\n");
        app.write_all(b"rest").await.unwrap();
        let mut rest = [0u8; 4];
        let mut proxied = proxied;
        proxied.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"rest");
    }

    #[tokio::test]
    async fn a_silent_client_waits_for_the_answer_and_sends_nothing() {
        let (_app, proxied) = tcp_pair().await;
        let (mut sender, mut server) = h2_pair().await;
        tokio::spawn(async move {
            let (_request, mut respond) = server.accept().await.unwrap().unwrap();
            respond
                .send_response(
                    http::Response::builder().status(200).body(()).unwrap(),
                    false,
                )
                .unwrap();
            // Drive the connection until the client closes it.
            while server.accept().await.is_some() {}
        });
        let mut early = EarlyData::new(&proxied);
        sender = sender.ready().await.unwrap();
        let (response, mut send) = sender.send_request(connect_request(), false).unwrap();
        let answer = early
            .send_while_answering(&mut send, response)
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert!(early.is_empty());
    }
}
