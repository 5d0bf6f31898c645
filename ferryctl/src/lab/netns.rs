//! Network namespaces for the lab and the end-to-end tests. Every
//! namespace is deleted when its guard drops (pass or fail); the namespaces
//! made here have no link to the machine's real interfaces.

use std::process::Command;

use anyhow::{bail, Context};

/// Whether this process runs as root (needed for namespaces and iptables).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs `f` on a short-lived thread inside the named network namespace
/// (`/run/netns/<name>`), for sockets: a socket belongs to the namespace
/// it was made in for life, so it can be used from any thread afterwards.
/// The calling thread stays where it is.
pub fn in_namespace<T: Send>(
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let path = std::path::Path::new("/run/netns").join(name);
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<T> {
                let ns = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering network namespace {name}"))?;
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread working in {name} panicked"))?
    })
}

/// A TCP connection to `addr` made inside the named network namespace
/// (non-blocking, for tokio).
pub fn connect_in(
    name: &str,
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> anyhow::Result<std::net::TcpStream> {
    in_namespace(name, || {
        let stream = std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr} in network namespace {name}"))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        // A leftover of a crashed run with the same name goes first.
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A TCP listener inside this namespace, for a server of the test
    /// process itself (an API server, a collector).
    pub fn listen_tcp(&self, addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
        in_namespace(&self.name, || {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("binding {addr} in {}", self.name))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
    }

    /// Writes `/etc/netns/<name>/<file>`, which `ip netns exec` mounts over
    /// `/etc/<file>` for the processes it starts (hosts, resolv.conf);
    /// removed with the namespace.
    pub fn set_etc(&self, file: &str, text: &str) -> anyhow::Result<()> {
        let dir = std::path::Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(file), text)?;
        Ok(())
    }

    /// Gives processes started in the namespace (through `ip netns exec`)
    /// their own /etc/resolv.conf; removed with the namespace.
    pub fn set_resolv_conf(&self, text: &str) -> anyhow::Result<()> {
        let dir = std::path::Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("resolv.conf"), text)?;
        Ok(())
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Arguments that start `program` inside the namespace (for [`super::Process`]).
    pub fn command<'a>(&'a self, program: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["netns", "exec", self.name.as_str(), program];
        all.extend_from_slice(args);
        all
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.name));
    }
}
