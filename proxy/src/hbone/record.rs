//! TLS 1.3 on HBONE connections: rustls does the handshake, Ferry moves the
//! records.
//!
//! rustls drives the handshake through its unbuffered API and then hands
//! over the traffic keys ([`rustls::kernel`], the interface kernel TLS is
//! configured through); [`RecordStream`] seals and opens the records
//! itself (RFC 8446, section 5) with ring's AEADs, the ones rustls would
//! have used. rustls copies every received record twice (into a `Vec`,
//! then into the reader's buffer) and reads at most one record per
//! `recvfrom`; here ciphertext is read straight into the reader's buffer
//! (h2's), as much as it has room for, and each record is decrypted where
//! it lies, shifted onto the plaintext before it (ring's `open_within`).
//! Sending seals each record in one buffer that goes out in one `write`
//! per flush. docs/benchmarks.md measures it.
//!
//! What rustls still does after the handshake, through its
//! [`KernelConnection`]: the next traffic secrets on a key update, and
//! session tickets (Ferry's clients resume no sessions; its listeners
//! issue no tickets). What this module does besides moving data, as RFC
//! 8446 asks: key updates both ways (answering one the peer requests, and
//! starting one before a key's confidentiality limit), `close_notify` on
//! shutdown and as the end of the peer's data, other alerts as errors,
//! and a record that does not authenticate, is too long or has an unknown
//! type as an error that ends the connection.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use ring::aead;
use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest plaintext of one record (2^14).
const MAX_PLAINTEXT: usize = 16 * 1024;
/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// AEAD tag of every TLS 1.3 suite.
const TAG: usize = 16;
/// Largest ciphertext a record may carry (2^14 + 256, RFC 8446 5.2).
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// Largest record on the wire.
const MAX_RECORD: usize = HEADER + MAX_CIPHERTEXT;
/// What a sealed record adds to its plaintext: header, inner type, tag.
const OVERHEAD: usize = HEADER + 1 + TAG;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

const KEY_UPDATE: u8 = 24;
const NEW_SESSION_TICKET: u8 = 4;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// A send queue larger than this is given back once it is written, so an
/// idle connection holds no bulk transfer's buffer.
const RETAIN: usize = 32 * 1024;

/// Why a record could not be read or written. Ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("TLS record of {0} bytes: longer than TLS 1.3 allows")]
    Overflow(usize),
    #[error("TLS record of outer type {0}: only application data may follow the handshake")]
    OuterType(u8),
    #[error("TLS record of inner type {0}: not application data, an alert or a handshake message")]
    InnerType(u8),
    #[error("TLS record did not authenticate (bad_record_mac)")]
    Decrypt,
    #[error("TLS record with no content type (all padding)")]
    NoContentType,
    #[error("TLS alert {0} from the peer")]
    Alert(u8),
    #[error("malformed TLS {0} message after the handshake")]
    Malformed(&'static str),
    #[error("TLS handshake message of type {0} after the handshake")]
    UnexpectedHandshake(u8),
    #[error("TLS connection ended inside a record")]
    Truncated,
    #[error("TLS connection ended without close_notify")]
    NoCloseNotify,
    #[error("TLS sequence number exhausted")]
    SequenceExhausted,
    #[error("TLS cipher suite not supported by the record layer")]
    Suite,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> Self {
        let kind = match e {
            RecordError::Truncated | RecordError::NoCloseNotify => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// One direction's traffic key: the AEAD key, the IV and the sequence
/// number of the next record (RFC 8446 5.3).
struct TrafficKey {
    key: aead::LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    /// Records after which this key is replaced (sending side; the
    /// suite's confidentiality limit).
    limit: u64,
}

impl TrafficKey {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets, limit: u64) -> Result<Self, RecordError> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(RecordError::Suite),
        };
        let key = aead::UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::Suite)?;
        let iv: [u8; aead::NONCE_LEN] = iv.as_ref().try_into().map_err(|_| RecordError::Suite)?;
        Ok(Self {
            key: aead::LessSafeKey::new(key),
            iv,
            seq,
            limit,
        })
    }

    /// The next record's nonce: the IV with the sequence number XORed into
    /// its last eight bytes. Moves the sequence on.
    fn next_nonce(&mut self) -> Result<aead::Nonce, RecordError> {
        let mut nonce = self.iv;
        for (n, s) in nonce[aead::NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or(RecordError::SequenceExhausted)?;
        Ok(aead::Nonce::assume_unique_for_key(nonce))
    }
}

/// The rustls side of a connection after its handshake: what computes the
/// next secrets on a key update.
enum Kernel {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Kernel {
    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_tx_secret(),
            Kernel::Server(k) => k.update_tx_secret(),
        }
    }

    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Kernel::Client(k) => k.update_rx_secret(),
            Kernel::Server(k) => k.update_rx_secret(),
        }
    }

    fn confidentiality_limit(&self) -> u64 {
        let suite = match self {
            Kernel::Client(k) => k.negotiated_cipher_suite(),
            Kernel::Server(k) => k.negotiated_cipher_suite(),
        };
        // Some headroom: a key update is two records under the old key at most.
        suite
            .tls13()
            .map_or(u64::MAX, |s| s.common.confidentiality_limit)
            .saturating_sub(16)
    }
}

/// A TLS 1.3 connection after its handshake (see the module docs).
pub struct RecordStream<IO> {
    io: IO,
    kernel: Kernel,
    rx: TrafficKey,
    tx: TrafficKey,
    /// Received bytes not given to the reader yet: `raw[raw_start..]` is
    /// ciphertext (what came with the handshake, a record not complete
    /// yet, or what a small read buffer left), `raw[plain]` plaintext
    /// opened and not read yet. Given back whenever it is empty.
    raw: Vec<u8>,
    raw_start: usize,
    plain: std::ops::Range<usize>,
    /// Sealed records not written yet: `out[out_start..]`.
    out: Vec<u8>,
    out_start: usize,
    /// Most sealed bytes queued before a write must drain them.
    out_limit: usize,
    /// The peer sent close_notify: its data ended.
    read_closed: bool,
    /// We sent close_notify.
    write_closed: bool,
}

impl<IO> std::fmt::Debug for RecordStream<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordStream")
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .field("queued", &(self.out.len() - self.out_start))
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

/// A TLS handshake that failed: rustls's verdict, or the connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the peer closed the connection during the TLS handshake")]
    Closed,
    #[error("TLS record of {0} bytes during the handshake: longer than TLS allows")]
    Overflow(usize),
    #[error("unexpected TLS state during the handshake: {0}")]
    State(&'static str),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl From<HandshakeError> for io::Error {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// A finished handshake: the stream and the peer's leaf certificate.
#[derive(Debug)]
pub struct Established<IO> {
    pub stream: RecordStream<IO>,
    pub peer_certificate: Option<CertificateDer<'static>>,
}

/// The client side of a handshake on `io`, then its records.
/// `config` must have `enable_secret_extraction` set.
pub async fn connect<IO>(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    io: IO,
    out_limit: usize,
) -> Result<Established<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = UnbufferedClientConnection::new(config, name)?;
    let (io, leftover) = drive(&mut conn, io).await?;
    let peer_certificate = leaf(conn.peer_certificates());
    let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
    let stream = RecordStream::new(io, Kernel::Client(kernel), secrets, leftover, out_limit)?;
    Ok(Established {
        stream,
        peer_certificate,
    })
}

/// The server side of a handshake on `io`, then its records.
/// `config` must have `enable_secret_extraction` set.
pub async fn accept<IO>(
    config: Arc<rustls::ServerConfig>,
    io: IO,
    out_limit: usize,
) -> Result<Established<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = UnbufferedServerConnection::new(config)?;
    let (io, leftover) = drive(&mut conn, io).await?;
    let peer_certificate = leaf(conn.peer_certificates());
    let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
    let stream = RecordStream::new(io, Kernel::Server(kernel), secrets, leftover, out_limit)?;
    Ok(Established {
        stream,
        peer_certificate,
    })
}

fn leaf(chain: Option<&[CertificateDer<'static>]>) -> Option<CertificateDer<'static>> {
    chain.and_then(|c| c.first()).cloned()
}

/// The end of the complete record starting at `at`, if all of it is in
/// `buf`.
fn record_end(buf: &[u8], at: usize) -> Result<Option<usize>, usize> {
    let Some(header) = buf.get(at..at + HEADER) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(len);
    }
    let end = at + HEADER + len;
    Ok((end <= buf.len()).then_some(end))
}

/// A client or server connection during its handshake.
trait Handshaking:
    std::ops::Deref<Target = rustls::unbuffered::UnbufferedConnectionCommon<Self::Data>>
{
    type Data;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Handshaking for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Handshaking for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

enum Step {
    Encode,
    Transmit,
    NeedMore,
    Traffic,
}

/// Drives a handshake to its end. rustls is shown whole records only,
/// one more each time it asks for more: the records after the peer's
/// last handshake message (a client's first application data, sent with
/// its Finished) stay unread and are returned for the record layer.
async fn drive<C, IO>(conn: &mut C, mut io: IO) -> Result<(IO, Vec<u8>), HandshakeError>
where
    C: Handshaking,
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut incoming: Vec<u8> = Vec::with_capacity(MAX_RECORD);
    let mut outgoing: Vec<u8> = Vec::new();
    // `incoming[..fed]`: the records shown to rustls.
    let mut fed = 0;
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..fed]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                send_alert(conn, &mut io).await;
                return Err(e.into());
            }
        };
        let step = match state {
            ConnectionState::EncodeTlsData(mut data) => {
                let at = outgoing.len();
                outgoing.resize(at + MAX_RECORD, 0);
                let written = match data.encode(&mut outgoing[at..]) {
                    Ok(n) => n,
                    Err(EncodeError::InsufficientSize(e)) => {
                        outgoing.resize(at + e.required_size, 0);
                        data.encode(&mut outgoing[at..])
                            .map_err(|_| HandshakeError::State("handshake record not encoded"))?
                    }
                    Err(EncodeError::AlreadyEncoded) => {
                        return Err(HandshakeError::State("handshake record encoded twice"))
                    }
                };
                outgoing.truncate(at + written);
                Step::Encode
            }
            ConnectionState::TransmitTlsData(data) => {
                data.done();
                Step::Transmit
            }
            ConnectionState::BlockedHandshake => Step::NeedMore,
            ConnectionState::WriteTraffic(_) => Step::Traffic,
            ConnectionState::ReadTraffic(_) => {
                return Err(HandshakeError::State(
                    "application data inside the handshake",
                ))
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(HandshakeError::Closed)
            }
            _ => return Err(HandshakeError::State("early data or an unknown state")),
        };
        incoming.drain(..discard);
        fed -= discard;
        match step {
            Step::Encode => {}
            Step::Transmit => {
                io.write_all(&outgoing).await?;
                io.flush().await?;
                outgoing.clear();
            }
            // A server may send before the client's Finished: the
            // handshake is over once rustls says so.
            Step::Traffic if !conn.is_handshaking() => {
                if !outgoing.is_empty() {
                    io.write_all(&outgoing).await?;
                    io.flush().await?;
                }
                return Ok((io, incoming));
            }
            Step::NeedMore | Step::Traffic => loop {
                match record_end(&incoming, fed) {
                    Ok(Some(end)) => {
                        fed = end;
                        break;
                    }
                    // Not a TLS record (plaintext, say): rustls judges
                    // what came and says so.
                    Err(_) if fed < incoming.len() => {
                        fed = incoming.len();
                        break;
                    }
                    Err(len) => return Err(HandshakeError::Overflow(len)),
                    Ok(None) => {
                        incoming.reserve(MAX_RECORD);
                        if io.read_buf(&mut incoming).await? == 0 {
                            return Err(HandshakeError::Closed);
                        }
                    }
                }
            },
        }
    }
}

/// After a failed handshake: the alert rustls queued for the peer, if
/// it can be written at once (the handshake fails either way).
async fn send_alert<C, IO>(conn: &mut C, io: &mut IO)
where
    C: Handshaking,
    IO: AsyncWrite + Unpin,
{
    let mut alert = [0; 64];
    let written = match conn.process(&mut []).state {
        Ok(ConnectionState::EncodeTlsData(mut data)) => data.encode(&mut alert).ok(),
        _ => None,
    };
    if let Some(n) = written {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), io.write_all(&alert[..n]))
            .await;
    }
}

impl<IO> RecordStream<IO> {
    fn new(
        io: IO,
        kernel: Kernel,
        secrets: ExtractedSecrets,
        leftover: Vec<u8>,
        out_limit: usize,
    ) -> Result<Self, RecordError> {
        let limit = kernel.confidentiality_limit();
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(Self {
            io,
            rx: TrafficKey::new(rx_seq, rx, u64::MAX)?,
            tx: TrafficKey::new(tx_seq, tx, limit)?,
            kernel,
            // The handshake's buffer is kept only if records came with it.
            raw: if leftover.is_empty() {
                Vec::new()
            } else {
                leftover
            },
            raw_start: 0,
            plain: 0..0,
            out: Vec::new(),
            out_start: 0,
            out_limit: out_limit.max(MAX_RECORD),
            read_closed: false,
            write_closed: false,
        })
    }

    /// The transport underneath.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Seals one record of `len` plaintext bytes of `content_type` at
    /// the end of the send queue; `fill` appends the bytes.
    fn seal(
        &mut self,
        len: usize,
        content_type: u8,
        fill: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), RecordError> {
        if self.tx.seq >= self.tx.limit {
            self.update_tx_key()?;
        }
        let start = self.out.len();
        let sealed_len = len + 1 + TAG;
        let header = [
            APPLICATION_DATA,
            3,
            3,
            (sealed_len >> 8) as u8,
            sealed_len as u8,
        ];
        self.out.extend_from_slice(&header);
        fill(&mut self.out);
        debug_assert_eq!(self.out.len(), start + HEADER + len);
        self.out.push(content_type);
        let nonce = self.tx.next_nonce()?;
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(
                nonce,
                aead::Aad::from(header),
                &mut self.out[start + HEADER..],
            )
            .map_err(|_| RecordError::SequenceExhausted)?;
        self.out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals a KeyUpdate under the current key, then moves to the next
    /// one (update_not_requested: the peer keeps its own).
    fn update_tx_key(&mut self) -> Result<(), RecordError> {
        // Sealed under the current key, past its limit if it has come:
        // the limit leaves room for it.
        let limit = std::mem::replace(&mut self.tx.limit, u64::MAX);
        let message = [KEY_UPDATE, 0, 0, 1, 0];
        let sealed = self.seal(message.len(), HANDSHAKE, |out| {
            out.extend_from_slice(&message)
        });
        self.tx.limit = limit;
        sealed?;
        let (seq, secrets) = self.kernel.update_tx()?;
        self.tx = TrafficKey::new(seq, secrets, self.tx.limit)?;
        Ok(())
    }

    /// Seals as much of `bufs` as the send queue has room for, in records
    /// of at most 2^14 bytes. Returns how much.
    fn seal_all(&mut self, bufs: &[IoSlice<'_>]) -> Result<usize, RecordError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let room = self
            .out_limit
            .saturating_sub(self.out.len() - self.out_start);
        let taken = total.min(room);
        let needed = taken + taken.div_ceil(MAX_PLAINTEXT) * OVERHEAD + 2 * (OVERHEAD + 4);
        if self.out.capacity() - self.out.len() < needed {
            // A bulk transfer fills the queue up to its limit between two
            // writes: room for all of it at once, rather than a larger
            // buffer (and a copy of what is queued) every few records.
            let full = self.out_limit + self.out_limit.div_ceil(MAX_PLAINTEXT) * OVERHEAD;
            let want = if self.out.len() + needed > RETAIN {
                full.max(self.out.len() + needed) - self.out.len()
            } else {
                needed
            };
            self.out.reserve(want);
        }
        // Where the next record's bytes start: a slice and an offset in it.
        let (mut index, mut offset) = (0, 0);
        let mut left = taken;
        while left > 0 {
            let record = left.min(MAX_PLAINTEXT);
            self.seal(record, APPLICATION_DATA, |out| {
                let mut want = record;
                while want > 0 {
                    let Some(b) = bufs.get(index) else { break };
                    let rest = &b[offset..];
                    let take = want.min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    want -= take;
                    if take == rest.len() {
                        index += 1;
                        offset = 0;
                    } else {
                        offset += take;
                    }
                }
            })?;
            left -= record;
        }
        Ok(taken)
    }

    /// Handles an alert or a handshake message received after the
    /// handshake.
    fn control(&mut self, content_type: u8, body: &[u8]) -> Result<(), RecordError> {
        match content_type {
            ALERT => {
                let [_level, description] = body else {
                    return Err(RecordError::Malformed("alert"));
                };
                match *description {
                    CLOSE_NOTIFY => {
                        self.read_closed = true;
                        Ok(())
                    }
                    USER_CANCELED => Ok(()),
                    other => Err(RecordError::Alert(other)),
                }
            }
            HANDSHAKE => {
                let mut rest = body;
                while !rest.is_empty() {
                    let [kind, a, b, c, ..] = *rest else {
                        return Err(RecordError::Malformed("handshake"));
                    };
                    let len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                    let Some(message) = rest.get(4..4 + len) else {
                        // Handshake messages split over records: none
                        // a TLS 1.3 peer sends after the handshake needs it.
                        return Err(RecordError::Malformed("handshake"));
                    };
                    match kind {
                        KEY_UPDATE => {
                            // Must end its record (RFC 8446 5.1).
                            if rest.len() != 4 + len {
                                return Err(RecordError::Malformed("key update"));
                            }
                            let request = match message {
                                [0] => false,
                                [1] => true,
                                _ => return Err(RecordError::Malformed("key update")),
                            };
                            let (seq, secrets) = self.kernel.update_rx()?;
                            self.rx = TrafficKey::new(seq, secrets, u64::MAX)?;
                            if request && !self.write_closed {
                                self.update_tx_key()?;
                            }
                        }
                        NEW_SESSION_TICKET => match &mut self.kernel {
                            Kernel::Client(k) => k.handle_new_session_ticket(message)?,
                            Kernel::Server(_) => {
                                return Err(RecordError::UnexpectedHandshake(kind))
                            }
                        },
                        other => return Err(RecordError::UnexpectedHandshake(other)),
                    }
                    rest = &rest[4 + len..];
                }
                Ok(())
            }
            other => Err(RecordError::InnerType(other)),
        }
    }
}

/// Opens the record `in_out[src..]` (ciphertext and tag) with `key`,
/// leaving its plaintext at the start of `in_out`. Returns the content
/// type and the content's length (padding and type taken off).
fn open(
    key: &mut TrafficKey,
    header: [u8; HEADER],
    in_out: &mut [u8],
    src: usize,
) -> Result<(u8, usize), RecordError> {
    if header[0] != APPLICATION_DATA {
        return Err(RecordError::OuterType(header[0]));
    }
    if in_out.len() - src < TAG + 1 {
        return Err(RecordError::Decrypt);
    }
    let nonce = key.next_nonce()?;
    let plain = key
        .key
        .open_within(nonce, aead::Aad::from(header), in_out, src..)
        .map_err(|_| RecordError::Decrypt)?;
    let Some(end) = plain.iter().rposition(|&b| b != 0) else {
        return Err(RecordError::NoContentType);
    };
    if end > MAX_PLAINTEXT {
        return Err(RecordError::Overflow(end));
    }
    Ok((plain[end], end))
}

impl<IO: AsyncRead + AsyncWrite + Unpin> RecordStream<IO> {
    /// Writes the send queue out. Ready once it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_start < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_start..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_start += n;
        }
        self.out_start = 0;
        if self.out.capacity() > RETAIN {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Ciphertext received and not opened yet.
    fn pending(&self) -> &[u8] {
        &self.raw[self.raw_start..]
    }

    /// Reads into the caller's buffer, behind the partial record the last
    /// read left, and opens the records there. Ready(Ok(true)) when
    /// plaintext was delivered or the peer's data ended.
    fn poll_read_direct(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<bool>> {
        let start = buf.filled().len();
        let pending = self.raw.len() - self.raw_start;
        buf.put_slice(&self.raw[self.raw_start..]);
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                buf.set_filled(start);
                return Poll::Ready(Err(e));
            }
            Poll::Pending => {
                buf.set_filled(start);
                return Poll::Pending;
            }
        }
        let read = buf.filled().len() - start - pending;
        if read == 0 {
            buf.set_filled(start);
            return Poll::Ready(Err(if pending > 0 {
                RecordError::Truncated
            } else {
                RecordError::NoCloseNotify
            }
            .into()));
        }
        self.raw = Vec::new();
        self.raw_start = 0;
        let region = &mut buf.filled_mut()[start..];
        // Records are opened from `r` and their plaintext shifted down to `w`.
        let (mut r, mut w) = (0, 0);
        let mut failed = None;
        while !self.read_closed {
            let end = match record_end(region, r) {
                Ok(Some(end)) => end,
                Ok(None) => break,
                Err(len) => {
                    failed = Some(RecordError::Overflow(len));
                    break;
                }
            };
            let mut header = [0; HEADER];
            header.copy_from_slice(&region[r..r + HEADER]);
            match open(&mut self.rx, header, &mut region[w..end], r + HEADER - w) {
                Ok((APPLICATION_DATA, len)) => w += len,
                Ok((content_type, len)) => {
                    if let Err(e) = self.control(content_type, &region[w..w + len]) {
                        failed = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            r = end;
        }
        if let Some(e) = failed {
            buf.set_filled(start);
            return Poll::Ready(Err(e.into()));
        }
        if !self.read_closed && r < region.len() {
            // A partial record, for the next read.
            self.raw.extend_from_slice(&region[r..]);
        }
        buf.set_filled(start + w);
        // A key update to answer goes out now, or with the next write.
        if self.out.len() > self.out_start {
            let _ = self.poll_drain(cx)?;
        }
        Poll::Ready(Ok(w > 0 || self.read_closed))
    }

    /// Opens the next record in the stream's own buffer, reading into it
    /// as needed, until there is plaintext in `plain` or the peer's data
    /// ended.
    fn poll_read_own(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.read_closed {
            let Some(end) = record_end(&self.raw, self.raw_start).map_err(RecordError::Overflow)?
            else {
                // Room for a whole record behind what is pending.
                self.raw.drain(..self.raw_start);
                self.raw_start = 0;
                self.plain = 0..0;
                let pending = self.raw.len();
                self.raw.reserve(MAX_RECORD);
                let read = ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut self.io),
                    cx,
                    &mut self.raw
                ))?;
                if read == 0 {
                    return Poll::Ready(Err(if pending > 0 {
                        RecordError::Truncated
                    } else {
                        RecordError::NoCloseNotify
                    }
                    .into()));
                }
                continue;
            };
            let at = self.raw_start;
            let mut header = [0; HEADER];
            header.copy_from_slice(&self.raw[at..at + HEADER]);
            let (content_type, len) = open(&mut self.rx, header, &mut self.raw[at..end], HEADER)?;
            self.raw_start = end;
            if content_type == APPLICATION_DATA {
                self.plain = at..at + len;
                if len > 0 {
                    return Poll::Ready(Ok(()));
                }
            } else {
                // An alert or a handshake message: rare, and small.
                let body = self.raw[at..at + len].to_vec();
                self.control(content_type, &body)?;
                if self.out.len() > self.out_start {
                    let _ = self.poll_drain(cx)?;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Gives the receive buffer back once it holds nothing: an idle
    /// connection keeps none.
    fn release_idle(&mut self) {
        if self.plain.is_empty() && self.raw_start == self.raw.len() && self.raw.capacity() > 0 {
            self.raw = Vec::new();
            self.raw_start = 0;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for RecordStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let take = this.plain.len().min(buf.remaining());
                buf.put_slice(&this.raw[this.plain.start..this.plain.start + take]);
                this.plain.start += take;
                this.release_idle();
                return Poll::Ready(Ok(()));
            }
            if this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Straight into the caller's buffer when a whole record fits
            // behind what is pending and no complete record waits here.
            let pending = this.pending();
            let direct = buf.remaining() >= MAX_RECORD + pending.len()
                && record_end(pending, 0)
                    .map_err(RecordError::Overflow)?
                    .is_none();
            if direct {
                if ready!(this.poll_read_direct(cx, buf))? {
                    this.release_idle();
                    return Poll::Ready(Ok(()));
                }
            } else {
                ready!(this.poll_read_own(cx))?;
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RecordStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if this.out.len() - this.out_start + MAX_RECORD > this.out_limit {
            ready!(this.poll_drain(cx))?;
        }
        Poll::Ready(Ok(this.seal_all(bufs)?))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.seal(2, ALERT, |out| out.extend_from_slice(&[1, CLOSE_NOTIFY]))?;
            this.write_closed = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::{TcpListener, TcpStream};

    const LIMIT: usize = 512 * 1024;

    /// A client and a server config, each with a certificate from one CA;
    /// `suite`: the only cipher suite offered.
    fn configs(
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (vec![cert.der().clone()], key)
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let roots = Arc::new(roots);
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites = vec![suite];
        }
        let provider = Arc::new(provider);
        let (chain, key) = leaf("client.test");
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain, key)
            .unwrap();
        client.enable_secret_extraction = true;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .unwrap();
        let (chain, key) = leaf("server.test");
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        server.enable_secret_extraction = true;
        server.send_tls13_tickets = 0;
        (Arc::new(client), Arc::new(server))
    }

    fn name() -> ServerName<'static> {
        ServerName::try_from("server.test").unwrap()
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, server) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        (client.unwrap(), server.unwrap().0)
    }

    /// Ferry's record layer at both ends.
    async fn pair(
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> (RecordStream<TcpStream>, RecordStream<TcpStream>) {
        let (client_config, server_config) = configs(suite);
        let (client_io, server_io) = tcp_pair().await;
        let (client, server) = tokio::join!(
            connect(client_config, name(), client_io, LIMIT),
            accept(server_config, server_io, LIMIT)
        );
        let (client, server) = (client.unwrap(), server.unwrap());
        assert!(client.peer_certificate.is_some());
        assert!(server.peer_certificate.is_some());
        (client.stream, server.stream)
    }

    /// `len` bytes no two nearby runs of which are alike.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ ((i >> 9) as u8) ^ seed)
            .collect()
    }

    /// Writes `data` in pieces of varied sizes, some as vectored writes.
    async fn write_varied<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) {
        let sizes = [1, 700, 16 * 1024, 16 * 1024 + 1, 40_000, 256 * 1024 + 9];
        let mut at = 0;
        let mut i = 0;
        while at < data.len() {
            let n = sizes[i % sizes.len()].min(data.len() - at);
            if i % 2 == 0 && n > 1 {
                let half = n / 2;
                let bufs = [
                    IoSlice::new(&data[at..at + half]),
                    IoSlice::new(&data[at + half..at + n]),
                ];
                let written = w.write_vectored(&bufs).await.unwrap();
                at += written;
            } else {
                w.write_all(&data[at..at + n]).await.unwrap();
                at += n;
            }
            i += 1;
        }
        w.flush().await.unwrap();
    }

    /// Reads `len` bytes with read buffers of varied sizes: small ones go
    /// through the stream's own buffer, large ones are opened in place.
    async fn read_varied<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Vec<u8> {
        let sizes = [
            5,
            300 * 1024,
            1000,
            64 * 1024,
            17 * 1024,
            16 * 1024 + 5 + 256,
        ];
        let mut got = Vec::with_capacity(len);
        let mut i = 0;
        while got.len() < len {
            let mut buf = vec![0; sizes[i % sizes.len()].min(len - got.len()).max(1)];
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended after {} of {len} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
            i += 1;
        }
        got
    }

    #[tokio::test]
    async fn ferry_to_ferry_both_ways_with_every_suite() {
        use rustls::crypto::ring::cipher_suite as s;
        for suite in [
            s::TLS13_AES_128_GCM_SHA256,
            s::TLS13_AES_256_GCM_SHA384,
            s::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let (mut client, mut server) = pair(Some(suite)).await;
            let up = pattern(3 << 20, 1);
            let down = pattern(2 << 20, 2);
            let (up2, down2) = (up.clone(), down.clone());
            let server_task = tokio::spawn(async move {
                let got = read_varied(&mut server, up2.len()).await;
                write_varied(&mut server, &down2).await;
                server.shutdown().await.unwrap();
                // The client's close_notify ends the data: a read gives 0.
                let mut rest = Vec::new();
                server.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty());
                got
            });
            write_varied(&mut client, &up).await;
            let got = read_varied(&mut client, down.len()).await;
            assert!(got == down, "{suite:?}: server to client bytes differ");
            // The server's close_notify: end of data, no error.
            let mut buf = [0; 10];
            assert_eq!(client.read(&mut buf).await.unwrap(), 0);
            client.shutdown().await.unwrap();
            let got = server_task.await.unwrap();
            assert!(got == up, "{suite:?}: client to server bytes differ");
        }
    }

    /// A client sending right behind its Finished (as h2's preface does):
    /// those records arrive with the handshake's last and are not lost.
    /// tokio-rustls at the client end: the records are standard TLS 1.3.
    #[tokio::test]
    async fn rustls_client_to_ferry_server() {
        let (client_config, server_config) = configs(None);
        let (client_io, server_io) = tcp_pair().await;
        let up = pattern(1 << 20, 3);
        let down = pattern(1 << 20, 4);
        let up2 = up.clone();
        let client = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsConnector::from(client_config)
                .connect(name(), client_io)
                .await
                .unwrap();
            tls.write_all(&up2[..100]).await.unwrap();
            tls.flush().await.unwrap();
            write_varied(&mut tls, &up2[100..]).await;
            let got = read_varied(&mut tls, 1 << 20).await;
            // rustls asks for a key update in the middle of what it sends
            // and reads what comes back under the answer.
            tls.get_mut().1.refresh_traffic_keys().unwrap();
            tls.write_all(b"after the key update").await.unwrap();
            tls.flush().await.unwrap();
            let mut tail = [0; 7];
            tls.read_exact(&mut tail).await.unwrap();
            assert_eq!(&tail, b"renewed");
            tls.shutdown().await.unwrap();
            got
        });
        let mut server = accept(server_config, server_io, LIMIT)
            .await
            .unwrap()
            .stream;
        let got = read_varied(&mut server, up.len()).await;
        assert!(got == up, "client to server bytes differ");
        write_varied(&mut server, &down).await;
        let mut after = [0; 20];
        server.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"after the key update");
        server.write_all(b"renewed").await.unwrap();
        server.flush().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert!(
            client.await.unwrap() == down,
            "server to client bytes differ"
        );
    }

    /// tokio-rustls at the server end; Ferry's client replaces its own key
    /// (as it does before a key's confidentiality limit) and rustls reads
    /// on under the new one.
    #[tokio::test]
    async fn ferry_client_to_rustls_server_with_key_updates() {
        let (client_config, server_config) = configs(None);
        let (client_io, server_io) = tcp_pair().await;
        let up = pattern(2 << 20, 5);
        let up2 = up.clone();
        let server = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsAcceptor::from(server_config)
                .accept(server_io)
                .await
                .unwrap();
            let got = read_varied(&mut tls, up2.len()).await;
            tls.write_all(b"done").await.unwrap();
            tls.shutdown().await.unwrap();
            got
        });
        let mut client = connect(client_config, name(), client_io, LIMIT)
            .await
            .unwrap()
            .stream;
        // A new key every 20 records.
        client.tx.limit = client.tx.seq + 20;
        let before = client.tx.seq;
        write_varied(&mut client, &up).await;
        assert!(client.tx.seq < before + 20, "the key was never replaced");
        let mut done = [0; 4];
        client.read_exact(&mut done).await.unwrap();
        assert_eq!(&done, b"done");
        assert_eq!(client.read(&mut done).await.unwrap(), 0);
        assert!(server.await.unwrap() == up, "client to server bytes differ");
    }

    /// Everything that arrived is opened by one read with room for it:
    /// the records are opened in the reader's buffer, one after another.
    #[tokio::test]
    async fn one_read_opens_every_record_that_arrived() {
        let (client_config, server_config) = configs(None);
        let (client_io, server_io) = tokio::io::duplex(4 << 20);
        let (client, server) = tokio::join!(
            connect(client_config, name(), client_io, LIMIT),
            accept(server_config, server_io, LIMIT)
        );
        let (mut client, mut server) = (client.unwrap().stream, server.unwrap().stream);
        let sent = pattern(200_000, 7);
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut buf = vec![0; 300 * 1024];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(n, sent.len(), "13 records, one read");
        assert!(buf[..n] == sent[..]);
        // And byte by byte through the stream's own buffer.
        client.write_all(&sent[..3000]).await.unwrap();
        client.flush().await.unwrap();
        let mut one = [0; 1];
        for (i, b) in sent[..3000].iter().enumerate() {
            server.read_exact(&mut one).await.unwrap();
            assert_eq!(one[0], *b, "byte {i}");
        }
    }

    /// Forwards client to server, handing the bytes to `tamper` first:
    /// it is given how many bytes went before, and returns how many of
    /// these to forward (fewer: the connection is cut there).
    async fn through(
        tamper: impl FnMut(usize, &mut [u8]) -> usize + Send + 'static,
    ) -> (io::Result<Vec<u8>>, io::Result<()>) {
        let (client_config, server_config) = configs(None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client_io, relay_in) = tcp_pair().await;
        let server_addr = listener.local_addr().unwrap();
        let relay = tokio::spawn(async move {
            let mut tamper = tamper;
            let out = TcpStream::connect(server_addr).await.unwrap();
            let (mut in_r, mut in_w) = relay_in.into_split();
            let (mut out_r, mut out_w) = out.into_split();
            let back = tokio::spawn(async move { tokio::io::copy(&mut out_r, &mut in_w).await });
            let mut seen = 0;
            let mut buf = vec![0; 4096];
            loop {
                let n = in_r.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let forward = tamper(seen, &mut buf[..n]);
                seen += n;
                if out_w.write_all(&buf[..forward]).await.is_err() || forward < n {
                    break;
                }
            }
            drop(out_w);
            back.abort();
        });
        let (server_io, _) = listener.accept().await.unwrap();
        let server = tokio::spawn(async move {
            let mut server = accept(server_config, server_io, LIMIT)
                .await
                .unwrap()
                .stream;
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.map(|_| got)
        });
        let mut client = connect(client_config, name(), client_io, LIMIT)
            .await
            .unwrap()
            .stream;
        let written = async {
            client.write_all(&pattern(64 * 1024, 6)).await?;
            client.shutdown().await
        }
        .await;
        let got = server.await.unwrap();
        relay.abort();
        (got, written)
    }

    #[tokio::test]
    async fn a_changed_byte_fails_the_record() {
        // Past the handshake (a few KiB): inside the application data.
        let (got, _) = through(|seen, buf| {
            if (seen..seen + buf.len()).contains(&30_000) {
                buf[30_000 - seen] ^= 1;
            }
            buf.len()
        })
        .await;
        let e = got.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("did not authenticate"), "{e}");
    }

    #[tokio::test]
    async fn a_connection_cut_inside_a_record_is_not_an_end_of_data() {
        // Inside the second record of application data.
        let (got, _) = through(|seen, buf| buf.len().min(30_000usize.saturating_sub(seen))).await;
        let e = got.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[tokio::test]
    async fn a_record_too_long_fails() {
        let (mut client, mut server) = pair(None).await;
        // A header announcing more than 2^14 + 256 bytes.
        client
            .io
            .write_all(&[APPLICATION_DATA, 3, 3, 0x41, 0x01])
            .await
            .unwrap();
        let mut buf = vec![0; 64 * 1024];
        let e = server.read(&mut buf).await.unwrap_err();
        assert!(e.to_string().contains("longer than TLS 1.3 allows"), "{e}");
    }
}
