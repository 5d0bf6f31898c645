//! Hitless restart and upgrade: a new proxy process takes the listening
//! sockets of the running one on the same node, so that no connection is
//! refused and none is accepted unprotected while the process changes.
//!
//! The two talk over a Unix stream socket in the state folder,
//! `<state-dir>/handover.sock` (the folder is private to the proxy, mode
//! 0700):
//!
//! 1. The successor connects and sends `HANDOVER 1\n`.
//! 2. The predecessor answers with one message: `LISTENERS a,b,...\n`, and
//!    the listeners' descriptors attached (`SCM_RIGHTS`), in that order.
//!    From now on both processes hold the same sockets: a connection waiting
//!    in an accept queue is taken by whichever accepts first, and none is
//!    lost.
//! 3. The successor builds itself on those sockets (binding only what it
//!    was not given), starts from the saved configuration and certificates
//!    (`crate::saved`), re-applies the capture rules (the same text: a
//!    no-op for the kernel), listens on the handover socket itself, and
//!    sends `SERVING\n`.
//! 4. The predecessor stops accepting (its accept loops end; the sockets
//!    live on in the successor), sends GOAWAY on its HBONE connections so
//!    peers open new streams (to the successor), lets its established
//!    connections finish up to `--drain-timeout`, and exits **without
//!    removing the capture rules**: the successor keeps them.
//!
//! If the successor fails before step 4, the predecessor simply goes on
//! serving. A proxy stopped without a successor (SIGTERM, uninstall)
//! removes its rules as before.

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The socket's name in the state folder.
pub const SOCKET: &str = "handover.sock";

const HELLO: &[u8] = b"HANDOVER 1\n";
const SERVING: &[u8] = b"SERVING\n";
/// More listeners than a proxy has (8 today).
const MAX_LISTENERS: usize = 16;

/// Errors of the exchange.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the running proxy answered {answer:?}, not a list of listeners")]
    Protocol { path: PathBuf, answer: String },
}

/// The listeners a predecessor gave this process, taken one by one as it
/// builds itself; and the line back to the predecessor, to say when this
/// process serves.
#[derive(Debug, Default)]
pub struct Inherited {
    listeners: BTreeMap<String, OwnedFd>,
    predecessor: Option<UnixStream>,
}

impl Inherited {
    /// Whether a predecessor handed its listeners over.
    pub fn from_predecessor(&self) -> bool {
        self.predecessor.is_some()
    }

    /// The TCP listener called `name`, if it was handed over and is bound
    /// where `want` says (a changed flag: bind anew).
    pub fn tcp(&mut self, name: &str, want: SocketAddr) -> Option<std::net::TcpListener> {
        let listener = std::net::TcpListener::from(self.listeners.remove(name)?);
        match listener.local_addr() {
            Ok(at) if same_place(at, want) => Some(listener),
            at => {
                tracing::warn!(listener = name, inherited = ?at, wanted = %want, "the handed-over listener is bound elsewhere: binding anew");
                None
            }
        }
    }

    /// The UDP socket called `name`, as [`Inherited::tcp`].
    pub fn udp(&mut self, name: &str, want: SocketAddr) -> Option<std::net::UdpSocket> {
        let socket = std::net::UdpSocket::from(self.listeners.remove(name)?);
        match socket.local_addr() {
            Ok(at) if same_place(at, want) => Some(socket),
            _ => None,
        }
    }

    /// Tells the predecessor that this process serves: it stops accepting
    /// and drains. Call once every listener is being served.
    pub fn serving(&mut self) {
        if let Some(mut stream) = self.predecessor.take() {
            match stream.write_all(SERVING) {
                Ok(()) => tracing::info!("serving: the previous proxy stops accepting and drains"),
                Err(e) => {
                    tracing::warn!(error = %e, "telling the previous proxy that this one serves failed; it goes on serving too")
                }
            }
        }
        for name in self.listeners.keys() {
            tracing::warn!(listener = %name, "handed over but not used (its flag is gone): closed");
        }
        self.listeners.clear();
    }
}

/// Whether a socket bound at `at` serves the flag `want`: the same
/// address, or `[::]` asked for and `0.0.0.0` bound (a node without IPv6).
fn same_place(at: SocketAddr, want: SocketAddr) -> bool {
    at == want
        || (at.port() == want.port()
            && at.ip().is_unspecified()
            && want.ip() == std::net::Ipv6Addr::UNSPECIFIED)
}

/// Asks the proxy running on this node (if any) for its listeners.
/// No one listening at `path` is no error: a first start binds its own.
pub fn take_over(path: &Path, timeout: Duration) -> Result<Inherited, HandoverError> {
    let io = |source| HandoverError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(Inherited::default());
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(HELLO).map_err(io)?;
    let mut text = [0u8; 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io(e.into()))?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let answer = String::from_utf8_lossy(&text[..received.bytes.min(text.len())]).into_owned();
    let names: Vec<String> = match answer
        .strip_prefix("LISTENERS ")
        .and_then(|l| l.strip_suffix('\n'))
    {
        Some(list) => list
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect(),
        None => {
            return Err(HandoverError::Protocol {
                path: path.to_path_buf(),
                answer,
            })
        }
    };
    if names.len() != fds.len() {
        return Err(HandoverError::Protocol {
            path: path.to_path_buf(),
            answer: format!("{answer} with {} descriptors", fds.len()),
        });
    }
    tracing::info!(listeners = ?names, "took over the listeners of the running proxy");
    Ok(Inherited {
        listeners: names.into_iter().zip(fds).collect(),
        predecessor: Some(stream),
    })
}

/// This process's listeners, for a successor: copies of their descriptors
/// by name.
#[derive(Debug, Default)]
pub struct Offer {
    listeners: Vec<(String, OwnedFd)>,
}

impl Offer {
    /// Adds a listener (a copy of its descriptor).
    pub fn add(&mut self, name: &str, socket: &impl AsFd) -> std::io::Result<()> {
        self.listeners
            .push((name.to_string(), socket.as_fd().try_clone_to_owned()?));
        Ok(())
    }

    /// Serves the handover socket (from [`bind`]) until a successor
    /// reports that it serves; then returns (the caller stops accepting and
    /// drains). A successor that fails on the way changes nothing.
    pub async fn serve(self, listener: tokio::net::UnixListener, timeout: Duration) {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "handover socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "handover socket");
                    continue;
                }
            };
            // Copies for this exchange: a failed successor leaves ours.
            let owned: Vec<(String, OwnedFd)> = self
                .listeners
                .iter()
                .filter_map(|(n, fd)| fd.try_clone().ok().map(|fd| (n.clone(), fd)))
                .collect();
            // A few blocking bytes each way, bounded by `timeout`, then the
            // wait for SERVING: on the blocking pool.
            let exchange = tokio::task::spawn_blocking(move || offer(stream, &owned, timeout));
            match exchange.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "a successor asked for the listeners but did not take over; serving on")
                }
                Err(e) => tracing::warn!(error = %e, "handover exchange"),
            }
        }
    }
}

/// Binds the handover socket at `path`, replacing a predecessor's socket
/// file (the predecessor serves its open socket, not the name). Needs a
/// Tokio runtime.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, HandoverError> {
    let io = |source| HandoverError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    tokio::net::UnixListener::bind(path).map_err(io)
}

/// One exchange with a successor: its greeting, the listeners, then
/// `SERVING` (or the successor going away: an error, nothing changes).
fn offer(
    mut stream: UnixStream,
    listeners: &[(String, OwnedFd)],
    timeout: Duration,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut hello = [0u8; HELLO.len()];
    stream.read_exact(&mut hello)?;
    if hello != HELLO {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a handover request",
        ));
    }
    let names: Vec<&str> = listeners.iter().map(|(n, _)| n.as_str()).collect();
    let text = format!("LISTENERS {}\n", names.join(","));
    let fds: Vec<std::os::fd::BorrowedFd<'_>> =
        listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_LISTENERS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("too many listeners to hand over"));
    }
    rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    tracing::info!(listeners = ?names, "handed the listeners to a successor; waiting for it to serve");
    // The successor builds itself (restores the saved state, applies the
    // rules) before it answers: allow it the longer wait.
    stream.set_read_timeout(Some(timeout * 6))?;
    let mut serving = [0u8; SERVING.len()];
    stream.read_exact(&mut serving)?;
    if serving != SERVING {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the successor did not say it serves",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listeners_move_to_the_successor_with_their_queued_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (tcp_at, udp_at) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
        let mut offer = Offer::default();
        offer.add("hbone", &tcp).unwrap();
        offer.add("dns-udp", &udp).unwrap();
        let served = tokio::spawn(offer.serve(bind(&path).unwrap(), Duration::from_secs(5)));
        // A connection waiting in the accept queue before the handover.
        let waiting = std::net::TcpStream::connect(tcp_at).unwrap();
        let mut inherited = loop {
            let inherited = tokio::task::spawn_blocking({
                let path = path.clone();
                move || take_over(&path, Duration::from_secs(5))
            })
            .await
            .unwrap()
            .unwrap();
            if inherited.from_predecessor() {
                break inherited;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The predecessor closes its own copies: the sockets live on.
        drop(tcp);
        drop(udp);
        let taken = inherited.tcp("hbone", tcp_at).expect("the TCP listener");
        let (accepted, peer) = taken.accept().unwrap();
        assert_eq!(peer, waiting.local_addr().unwrap());
        drop(accepted);
        assert!(inherited.udp("dns-udp", udp_at).is_some());
        // A listener asked for elsewhere is not used.
        assert!(inherited
            .tcp("capture", "127.0.0.1:1".parse().unwrap())
            .is_none());
        assert!(!served.is_finished());
        inherited.serving();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the predecessor learns the successor serves")
            .unwrap();
    }

    #[test]
    fn nobody_to_take_over_from_is_a_first_start() {
        let dir = tempfile::tempdir().unwrap();
        let inherited = take_over(&dir.path().join(SOCKET), Duration::from_secs(1)).unwrap();
        assert!(!inherited.from_predecessor());
    }

    #[test]
    fn an_ipv4_fallback_serves_a_dual_stack_flag() {
        let v4: SocketAddr = "0.0.0.0:15001".parse().unwrap();
        assert!(same_place(v4, "[::]:15001".parse().unwrap()));
        assert!(!same_place(v4, "[::]:15006".parse().unwrap()));
        assert!(!same_place(
            "127.0.0.1:15000".parse().unwrap(),
            "127.0.0.2:15000".parse().unwrap()
        ));
    }
}
