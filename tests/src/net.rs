//! Network pieces for end-to-end tests: an echo server standing for a pod,
//! a SOCKS5 client that connects from a pod's address, and a relay that
//! records the bytes crossing the link between two node proxies. Every
//! task stops when its handle is dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Aborts a task when dropped.
#[derive(Debug)]
pub struct TaskGuard(JoinHandle<()>);

impl TaskGuard {
    pub fn new(task: JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP server that greets with `<name>\n` and then echoes until EOF,
/// after which it closes its side (so half-close is observable).
#[derive(Debug)]
pub struct EchoServer {
    pub address: SocketAddr,
    _task: TaskGuard,
}

impl EchoServer {
    pub async fn start(address: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let banner = format!("{name}\n").into_bytes();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let banner = banner.clone();
                tokio::spawn(async move {
                    if stream.write_all(&banner).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Ok(Self {
            address,
            _task: TaskGuard(task),
        })
    }
}

/// Connects through a SOCKS5 proxy from `from` (a pod's address) to
/// `host:port` (an IP or a name).
pub async fn socks5_connect(
    proxy: SocketAddr,
    from: IpAddr,
    host: &str,
    port: u16,
) -> std::io::Result<TcpStream> {
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(proxy)).await??;
    stream.write_all(&[5, 1, 0]).await?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await?;
    if choice != [5, 0] {
        return Err(std::io::Error::other(format!(
            "SOCKS5 method refused: {choice:?}"
        )));
    }
    let mut request = vec![5, 1, 0];
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        Ok(IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
        Err(_) => {
            request.push(3);
            request.push(u8::try_from(host.len()).map_err(std::io::Error::other)?);
            request.extend_from_slice(host.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    stream.write_all(&request).await?;
    let mut reply = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply)).await??;
    if reply[1] != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("SOCKS5 reply code {}", reply[1]),
        ));
    }
    Ok(stream)
}

/// Reads the banner line of an [`EchoServer`].
pub async fn read_banner(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut byte)).await??;
        if byte[0] == b'\n' {
            return String::from_utf8(line).map_err(std::io::Error::other);
        }
        line.push(byte[0]);
    }
}

/// Connects through SOCKS5 and returns which backend answered.
pub async fn who_answers(
    proxy: SocketAddr,
    from: IpAddr,
    host: &str,
    port: u16,
) -> std::io::Result<String> {
    let mut stream = socks5_connect(proxy, from, host, port).await?;
    read_banner(&mut stream).await
}

/// Forwards `listen` to `target` and records every byte in both directions.
#[derive(Debug)]
pub struct Relay {
    pub recorded: Arc<Mutex<Vec<u8>>>,
    _task: TaskGuard,
}

impl Relay {
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let sink = recorded.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, sink.clone()), pump(sr, cw, sink));
                });
            }
        });
        Ok(Self {
            recorded,
            _task: TaskGuard(task),
        })
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.recorded.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    sink: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Ok(mut s) = sink.lock() {
                    s.extend_from_slice(&buf[..n]);
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
