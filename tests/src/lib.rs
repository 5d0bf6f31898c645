//! End-to-end harness: runs the real Ferry binaries as processes and talks
//! to them over real sockets.
//!
//! Everything a test starts is owned by a guard: [`Process`] kills its child
//! by PID on drop, [`tempfile::TempDir`] removes its folder, so a failing
//! test cleans up as well as a passing one. All traffic stays on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Path of a workspace binary, built next to the test executable.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target folder")?;
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// The repository root (for deploy/examples and friends).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (the OS picks; the listener is closed again).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// A child process that is killed (by PID) when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `program` with `args`; stdout and stderr go to `log`.
    pub fn start(name: &str, program: &Path, args: &[&str], log: PathBuf) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).context("response is not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    Ok((status, body.to_string()))
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`
/// with `what` and the last error seen.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies every file of `from` into `to` (not recursive).
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// A control plane and node proxies on loopback, reading a manifest folder.
#[derive(Debug)]
pub struct LoopbackMesh {
    pub manifests: tempfile::TempDir,
    pub logs: tempfile::TempDir,
    pub control_plane_port: u16,
    pub control_plane: Process,
    pub proxies: Vec<(String, SocketAddr, Process)>,
}

impl LoopbackMesh {
    /// Starts a control plane on a copy of `manifests` and one proxy per node name.
    pub fn start(manifests: &Path, nodes: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        copy_dir(manifests, dir.path())?;
        let logs = tempfile::tempdir()?;
        let port = free_port()?;
        let control_plane = Self::start_control_plane(dir.path(), logs.path(), port, 0)?;
        let mut proxies = Vec::new();
        for node in nodes {
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let proxy = Process::start(
                node,
                &binary("ferry-proxy")?,
                &[
                    "--node",
                    node,
                    "--control-plane",
                    &format!("http://127.0.0.1:{port}"),
                    "--admin",
                    &admin.to_string(),
                ],
                logs.path().join(format!("proxy-{node}.log")),
            )?;
            proxies.push((node.to_string(), admin, proxy));
        }
        Ok(Self {
            manifests: dir,
            logs,
            control_plane_port: port,
            control_plane,
            proxies,
        })
    }

    fn start_control_plane(
        manifests: &Path,
        logs: &Path,
        port: u16,
        generation: u32,
    ) -> anyhow::Result<Process> {
        Process::start(
            "control-plane",
            &binary("ferry-control-plane")?,
            &[
                "--manifests",
                &manifests.display().to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
            logs.join(format!("control-plane-{generation}.log")),
        )
    }

    /// Kills the control plane and starts a new one on the same port.
    pub fn restart_control_plane(&mut self, generation: u32) -> anyhow::Result<()> {
        self.control_plane.kill();
        self.control_plane = Self::start_control_plane(
            self.manifests.path(),
            self.logs.path(),
            self.control_plane_port,
            generation,
        )?;
        Ok(())
    }

    /// `/config_dump` of a proxy, parsed.
    pub fn config_dump(&self, node: &str) -> anyhow::Result<serde_json::Value> {
        let (_, admin, _) = self
            .proxies
            .iter()
            .find(|(n, _, _)| n == node)
            .with_context(|| format!("no proxy for node {node}"))?;
        let (status, body) = http_get(*admin, "/config_dump")?;
        anyhow::ensure!(status == 200, "config_dump answered {status}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Status code of a proxy's `/healthz/ready`.
    pub fn ready_status(&self, node: &str) -> anyhow::Result<u16> {
        let (_, admin, _) = self
            .proxies
            .iter()
            .find(|(n, _, _)| n == node)
            .with_context(|| format!("no proxy for node {node}"))?;
        Ok(http_get(*admin, "/healthz/ready")?.0)
    }

    /// Waits until `check` holds for every proxy's config dump.
    pub fn wait_all(
        &self,
        what: &str,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        for (node, _, _) in &self.proxies {
            wait_for(
                &format!("{what} on {node}"),
                Duration::from_secs(20),
                || {
                    let dump = self.config_dump(node)?;
                    Ok(check(&dump).then_some(()))
                },
            )
            .with_context(|| self.diagnostics())?;
        }
        Ok(())
    }

    /// Logs of every process, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("--- control plane log ---\n{}", self.control_plane.log());
        for (node, _, p) in &self.proxies {
            out.push_str(&format!("\n--- proxy {node} log ---\n{}", p.log()));
        }
        out
    }
}

/// Finds a resource in a config dump by kind and key.
pub fn resource<'a>(
    dump: &'a serde_json::Value,
    kind: &str,
    key: &str,
) -> Option<&'a serde_json::Value> {
    dump["resources"][kind]
        .as_array()?
        .iter()
        .find(|r| r["key"] == key)
}
