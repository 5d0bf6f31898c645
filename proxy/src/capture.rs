//! Transparent capture: pods' outbound TCP is redirected by iptables to the
//! proxy's capture listener, which reads the original destination from the
//! socket (`SO_ORIGINAL_DST`, IPv4 and IPv6) and hands the connection to
//! the same outbound path as SOCKS5.
//!
//! [`CaptureRules`] owns the rules: a dedicated chain `FERRY_OUTBOUND` in the
//! nat table, jumped to from PREROUTING for TCP entering on the pod-facing
//! interface. Only PREROUTING is used, so the proxy's own connections
//! (locally generated, OUTPUT) are never captured and nothing loops; the
//! HBONE port is returned untouched. Installation is idempotent (the chain
//! is flushed and refilled, the jump added once), repairs leftovers of a
//! crashed run, and [`CaptureRules::remove`] undoes it on shutdown.
//! iptables (the nft backend on Debian 12) is used rather than native nft
//! so the same rules work with either backend a host has; see docs/.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::{TcpListener, TcpStream};

use crate::outbound::{Destination, Outbound};

/// The nat chain Ferry owns.
pub const CHAIN: &str = "FERRY_OUTBOUND";

/// The destination a redirected connection was sent to.
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if local.is_ipv4() {
        let sa = getsockopt(stream, sockopt::OriginalDst)?;
        Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )))
    } else {
        let sa = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )))
    }
}

/// Serves redirected connections until the task is dropped.
pub async fn serve(listener: TcpListener, outbound: Arc<Outbound>) {
    let own = listener.local_addr().ok();
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "capture accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let outbound = outbound.clone();
        tokio::spawn(async move {
            let destination = match original_destination(&client) {
                Ok(d) if Some(d) != own => d,
                Ok(_) => {
                    tracing::debug!(%peer, "connection to the capture port itself: closed");
                    return;
                }
                Err(e) => {
                    tracing::info!(%peer, error = %e, "no original destination (not redirected?): closed");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            match outbound
                .connect(peer, Destination::Address(destination))
                .await
            {
                Ok(connected) => {
                    let service = connected.service.clone();
                    let (sent, received) = Outbound::relay(client, connected).await;
                    tracing::debug!(%peer, %destination, service = service.as_deref().unwrap_or("-"), sent, received, "captured connection closed");
                }
                Err(e) => {
                    // Dropping the socket resets the client: "connection refused" semantics.
                    tracing::info!(%peer, %destination, error = %e, "captured connection refused");
                }
            }
        });
    }
}

/// Errors managing the rules.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// The redirect rules for pod traffic entering on `interface`.
#[derive(Debug, Clone)]
pub struct CaptureRules {
    pub interface: String,
    pub capture_port: u16,
    pub hbone_port: u16,
}

fn iptables(args: &[&str]) -> Result<bool, CaptureError> {
    let command = format!("iptables {}", args.join(" "));
    let out = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|source| CaptureError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    // -C and -D of an absent rule, -N of an existing chain: not errors here.
    if args
        .iter()
        .any(|a| matches!(*a, "-C" | "-D" | "-N" | "-X" | "-F"))
    {
        return Ok(false);
    }
    Err(CaptureError::Failed { command, stderr })
}

impl CaptureRules {
    fn jump(&self) -> Vec<String> {
        [
            "PREROUTING",
            "-i",
            &self.interface,
            "-p",
            "tcp",
            "-j",
            CHAIN,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Installs (or repairs) the rules; safe to run any number of times.
    pub fn install(&self) -> Result<(), CaptureError> {
        iptables(&["-t", "nat", "-N", CHAIN])?;
        iptables(&["-t", "nat", "-F", CHAIN])?;
        let hbone = self.hbone_port.to_string();
        let capture = self.capture_port.to_string();
        iptables(&[
            "-t", "nat", "-A", CHAIN, "-p", "tcp", "--dport", &hbone, "-j", "RETURN",
        ])?;
        iptables(&[
            "-t",
            "nat",
            "-A",
            CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &capture,
        ])?;
        let jump = self.jump();
        let jump: Vec<&str> = jump.iter().map(String::as_str).collect();
        let mut check = vec!["-t", "nat", "-C"];
        check.extend(&jump);
        if !iptables(&check)? {
            let mut insert = vec!["-t", "nat", "-I"];
            insert.extend(&jump);
            iptables(&insert)?;
        }
        tracing::info!(interface = %self.interface, capture_port = self.capture_port, "capture rules installed");
        Ok(())
    }

    /// Removes the rules (every copy of the jump, then the chain).
    pub fn remove(&self) -> Result<(), CaptureError> {
        let jump = self.jump();
        let jump: Vec<&str> = jump.iter().map(String::as_str).collect();
        let mut delete = vec!["-t", "nat", "-D"];
        delete.extend(&jump);
        while iptables(&delete)? {}
        iptables(&["-t", "nat", "-F", CHAIN])?;
        iptables(&["-t", "nat", "-X", CHAIN])?;
        tracing::info!(interface = %self.interface, "capture rules removed");
        Ok(())
    }
}
