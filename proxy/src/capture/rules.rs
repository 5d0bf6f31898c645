//! The capture rules: [`CaptureRules`] owns them: two chains of the nat table, rendered
//! from the configuration and replaced atomically (`iptables-restore
//! --noflush`) whenever what they would say changes, so capture follows
//! pods and services as they come and go:
//!
//! - `FERRY_OUTBOUND`, for TCP entering from the pods (the pod-facing
//!   interface): everything a mesh pod of this node sends goes to the
//!   capture listener; from any pod, connections to service addresses
//!   (cluster, load-balancer, external IPs) and node ports go there too
//!   (kube-proxy's part); a pod outside the mesh connecting to a mesh pod
//!   of this node goes to the inbound plaintext listener, to be policed.
//!   Anything else (pods outside the mesh talking to pods outside the mesh
//!   or to the world) is routed untouched, source address included.
//! - `FERRY_INBOUND`, for TCP entering on any other interface: plaintext to
//!   a mesh pod of this node goes to the inbound plaintext listener (policed
//!   by source address, then passed through); load-balancer and external IPs
//!   and node ports of this node go to the capture listener, which routes
//!   them as services.
//!
//! Both return the HBONE port untouched. Only PREROUTING is used, so the
//! proxy's own connections (locally generated, OUTPUT) are never captured
//! and nothing loops. Installation is idempotent (chains declared in the
//! restore input are flushed and refilled, each jump added once), repairs
//! the leftovers of a crashed run, and [`CaptureRules::remove`] undoes it
//! on shutdown. iptables (the nft backend on Debian 12) is used rather than
//! native nft so the same rules work with either backend a host has; see
//! docs/architecture.md. Both families: `iptables` and `ip6tables` hold the
//! same chains, each with its own family's addresses.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::collections::BTreeMap;
use std::sync::Mutex;

use ferry_api::model::Service;
use ferry_core::state::{ConfigStore, ProxyState};
use prometheus_client::metrics::gauge::Gauge;

use super::backend::Backend;
use super::interface::{covers, link_kind, pattern_for, InterfaceSetting, Routes};

/// The nat chain for traffic from the pods.
pub const CHAIN: &str = "FERRY_OUTBOUND";
/// The nat chain for traffic from elsewhere (other nodes, outside clients).
pub const INBOUND_CHAIN: &str = "FERRY_INBOUND";

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

/// An IP family and its tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// This family's binary of `backend`: `iptables-nft`, `ip6tables-legacy-restore`...
    pub(crate) fn tool_name(self, backend: Backend, tool: &str) -> String {
        self.tool(backend, tool)
    }

    fn tool(self, backend: Backend, tool: &str) -> String {
        let family = match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{family}{}{tool}", backend.suffix())
    }

    fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn holds(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip.to_canonical()),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// The redirect rules of one node.
#[derive(Debug)]
pub struct CaptureRules {
    /// The node whose pods are captured.
    pub node: String,
    /// `--capture-interface`: a name, a prefix, or found from the routes.
    pub setting: InterfaceSetting,
    /// The interface (or `prefix+`) the jumps match: the setting's name,
    /// or what `auto` finds from the node's pods (widened as new pods
    /// show it must be). Unset, the chains exist but nothing jumps to
    /// them. Read and written by the rules task only (and at removal).
    pub interface: Mutex<Option<String>>,
    /// The capture (outbound) listener's port.
    pub capture_port: u16,
    /// The inbound plaintext listener's port; `None`: plaintext to pods is
    /// not intercepted.
    pub inbound_port: Option<u16>,
    pub hbone_port: u16,
    /// The families whose rules are managed: IPv4, and IPv6 unless the
    /// host has no IPv6 nat table (then [`CaptureRules::install`] drops it).
    pub families: Vec<Family>,
    /// Whether Service addresses are served for every pod of the node
    /// (a cluster without kube-proxy). Off, only connections with a mesh
    /// workload at one end are taken: everything a mesh pod sends, and
    /// connections to a mesh pod of this node or to a Service with an
    /// endpoint in the mesh; every other Service is left to kube-proxy.
    pub kube_proxy_replacement: bool,
    /// The iptables binaries used (resolved: not [`Backend::Auto`]).
    pub backend: Backend,
    /// How often the jumps are checked to still come first in PREROUTING.
    pub recheck: Duration,
    /// Pods of this node routed by an interface the jumps do not match.
    pub outside: Gauge,
    /// The subnets the node's pods share a link in (told to the
    /// connections that keep client addresses: `net::transparent`).
    pub shared_subnets: std::sync::Arc<arc_swap::ArcSwap<Vec<(IpAddr, u32)>>>,
}

/// Runs `program` (feeding it `stdin`), returning its standard output, or
/// `None` when it failed in a way `tolerated` accepts (its stderr).
pub(super) fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    tolerated: bool,
) -> Result<Option<String>, CaptureError> {
    let command = format!("{program} {}", args.join(" "));
    let spawn = |source| CaptureError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    if tolerated {
        return Ok(None);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(CaptureError::Failed { command, stderr })
}

/// Seconds an iptables command waits for the xtables lock (held by
/// kube-proxy or the CNI while they write their own rules).
const LOCK_WAIT: &str = "5";

impl CaptureRules {
    /// The interface for `setting` at start: its name, or not known yet
    /// (`auto`).
    pub fn interface_for(setting: &InterfaceSetting) -> Mutex<Option<String>> {
        Mutex::new(match setting {
            InterfaceSetting::Named(name) => Some(name.clone()),
            InterfaceSetting::Auto => None,
        })
    }

    /// The interface (or `prefix+`) the jumps match, if known.
    pub fn interface(&self) -> Option<String> {
        self.interface
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_interface(&self, pattern: String) {
        *self.interface.lock().unwrap_or_else(|e| e.into_inner()) = Some(pattern);
    }

    /// The PREROUTING jumps into the two chains, as `iptables -S` prints
    /// them; `None` while the interface is not known.
    fn jumps(&self) -> Option<[String; 2]> {
        let interface = self.interface()?;
        Some([
            format!("-A PREROUTING -i {interface} -p tcp -j {CHAIN}"),
            format!("-A PREROUTING ! -i {interface} -p tcp -j {INBOUND_CHAIN}"),
        ])
    }

    /// Publishes the subnets the pods of this node share a link in.
    fn share_subnets(&self, state: &ProxyState, routes: &Routes) {
        let mut subnets: Vec<(IpAddr, u32)> = state
            .workloads_on(&self.node)
            .flat_map(|w| w.addresses.iter())
            .filter_map(|ip| routes.shared_subnet(*ip))
            .collect();
        subnets.sort();
        subnets.dedup();
        if **self.shared_subnets.load() != subnets {
            self.shared_subnets.store(std::sync::Arc::new(subnets));
        }
    }

    /// The interface the kernel routes each pod of this node to, by pod
    /// (`namespace/name`). Pods on the node's own address (host network)
    /// are left out: they are not behind the pod interface.
    fn pod_routes(&self, state: &ProxyState, routes: &Routes) -> BTreeMap<String, String> {
        let node_addresses: BTreeSet<IpAddr> = state
            .node(&self.node)
            .into_iter()
            .flat_map(|n| n.addresses.iter())
            .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        let mut found = BTreeMap::new();
        for w in state.workloads_on(&self.node) {
            for ip in &w.addresses {
                if node_addresses.contains(&ip.to_canonical()) {
                    continue;
                }
                if let Some(interface) = routes.pod_interface(*ip) {
                    found.insert(w.key.to_string(), interface);
                }
            }
        }
        found
    }

    /// The changes that make `prerouting` (the nat PREROUTING chain as
    /// `iptables -S` lists it) start with exactly our two jumps: every
    /// other jump into our chains deleted (copies, or a previous run's
    /// with another interface), ours inserted first; `None` when it already
    /// does. First matters: a rule ahead of them (kube-proxy's
    /// `KUBE-SERVICES`, inserted after ours) would DNAT a mesh pod's
    /// Service traffic before capture saw it.
    fn reorder(&self, prerouting: &str) -> Option<String> {
        let rules: Vec<&str> = prerouting
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("-A PREROUTING "))
            .collect();
        let jumps = self.jumps()?;
        let in_place = rules.len() >= 2
            && rules[0] == jumps[0]
            && rules[1] == jumps[1]
            && rules.iter().filter(|l| jumps_to_ours(l)).count() == 2;
        if in_place {
            return None;
        }
        let mut out = String::from("*nat\n");
        for rule in rules.iter().filter(|l| jumps_to_ours(l)) {
            let _ = writeln!(out, "-D{}", &rule[2..]);
        }
        for jump in jumps.iter().rev() {
            let _ = writeln!(out, "-I PREROUTING 1{}", &jump["-A PREROUTING".len()..]);
        }
        out.push_str("COMMIT\n");
        Some(out)
    }

    /// Makes our jumps the first rules of PREROUTING (see
    /// [`Self::reorder`]), in one transaction; whether anything changed.
    pub fn ensure_jumps_first(&self, family: Family) -> Result<bool, CaptureError> {
        if self.interface().is_none() {
            return Ok(false);
        }
        let listing = run(
            &family.tool(self.backend, ""),
            &["-w", LOCK_WAIT, "-t", "nat", "-S", "PREROUTING"],
            None,
            false,
        )?
        .unwrap_or_default();
        match self.reorder(&listing) {
            None => Ok(false),
            Some(changes) => {
                self.apply(family, &changes)?;
                Ok(true)
            }
        }
    }

    /// The IPv4 chains for `state`, as `iptables-restore` input.
    pub fn render(&self, state: &ProxyState) -> String {
        self.render_family(state, Family::V4)
    }

    /// The two chains of `family` for `state`, as `iptables-restore` /
    /// `ip6tables-restore` input. The output is sorted, so equal
    /// configurations render equal text.
    pub fn render_family(&self, state: &ProxyState, family: Family) -> String {
        let bits = family.host_prefix();
        let local_mesh: BTreeSet<IpAddr> = state
            .workloads_on(&self.node)
            .filter(|w| w.mesh)
            .flat_map(|w| w.addresses.iter())
            .map(|ip| ip.to_canonical())
            .filter(|ip| family.holds(*ip))
            .collect();
        // Which Services are the mesh's to serve: every one when the proxy
        // replaces kube-proxy; otherwise those a connection to which may
        // reach a mesh pod, whose inbound policy must see it (kube-proxy
        // would hand it to a mesh pod of this node before any rule of ours
        // saw the pod's address).
        let ours = |s: &Service| self.kube_proxy_replacement || state.has_mesh_endpoint(s);
        let mut services = BTreeSet::new();
        let mut published = BTreeSet::new();
        for (ip, service) in state.service_addresses() {
            if !family.holds(ip) || !ours(service) {
                continue;
            }
            services.insert(ip.to_canonical());
            if service.load_balancer_ips.contains(&ip) || service.external_ips.contains(&ip) {
                published.insert(ip.to_canonical());
            }
        }
        let node_ports: BTreeSet<u16> = state
            .node_ports()
            .filter(|(_, s)| ours(s))
            .map(|(port, _)| port)
            .collect();
        let capture = self.capture_port;
        // From the pods, DNAT to the node's own address: REDIRECT would
        // need an address on the pod-facing interface, which routed CNIs'
        // per-pod veths (cali*, eni*, lxc*) do not have. Without a known
        // node address of this family, REDIRECT.
        let node_address = state
            .node(&self.node)
            .into_iter()
            .flat_map(|n| n.addresses.iter())
            .filter(|a| a.kind == "InternalIP")
            .filter_map(|a| a.address.trim().parse::<IpAddr>().ok())
            .find(|ip| family.holds(*ip));
        let to = |port: u16| match node_address {
            Some(IpAddr::V4(ip)) => format!("DNAT --to-destination {ip}:{port}"),
            Some(IpAddr::V6(ip)) => format!("DNAT --to-destination [{ip}]:{port}"),
            None => format!("REDIRECT --to-ports {port}"),
        };
        let (to_capture, to_inbound) = (to(capture), self.inbound_port.map(to));
        let mut out = String::from("*nat\n");
        let _ = writeln!(out, ":{CHAIN} - [0:0]");
        let _ = writeln!(out, ":{INBOUND_CHAIN} - [0:0]");
        // HBONE to this node's proxy passes untouched; port 15008 of a pod
        // is an ordinary port, captured and policed like any other.
        for chain in [CHAIN, INBOUND_CHAIN] {
            let _ = writeln!(
                out,
                "-A {chain} -m addrtype --dst-type LOCAL -p tcp --dport {} -j RETURN",
                self.hbone_port
            );
        }
        // From the pods: mesh pods entirely, then anyone to a service.
        for ip in &local_mesh {
            let _ = writeln!(out, "-A {CHAIN} -s {ip}/{bits} -p tcp -j {to_capture}");
        }
        for ip in &services {
            let _ = writeln!(out, "-A {CHAIN} -d {ip}/{bits} -p tcp -j {to_capture}");
        }
        // Node ports of this node (another node's are handled there, as
        // kube-proxy does).
        for port in &node_ports {
            let _ = writeln!(
                out,
                "-A {CHAIN} -m addrtype --dst-type LOCAL -p tcp --dport {port} -j {to_capture}"
            );
        }
        if let (Some(inbound), Some(to_inbound)) = (self.inbound_port, &to_inbound) {
            // A pod outside the mesh reaching a mesh pod of this node.
            for ip in &local_mesh {
                let _ = writeln!(out, "-A {CHAIN} -d {ip}/{bits} -p tcp -j {to_inbound}");
            }
            // Plaintext from elsewhere to a mesh pod of this node.
            for ip in &local_mesh {
                let _ = writeln!(
                    out,
                    "-A {INBOUND_CHAIN} -d {ip}/{bits} -p tcp -j REDIRECT --to-ports {inbound}"
                );
            }
        }
        for ip in &published {
            let _ = writeln!(
                out,
                "-A {INBOUND_CHAIN} -d {ip}/{bits} -p tcp -j REDIRECT --to-ports {capture}"
            );
        }
        for port in &node_ports {
            let _ = writeln!(
                out,
                "-A {INBOUND_CHAIN} -m addrtype --dst-type LOCAL -p tcp --dport {port} -j REDIRECT --to-ports {capture}"
            );
        }
        out.push_str("COMMIT\n");
        out
    }

    /// Replaces both chains of `family` with `rules` (from
    /// [`Self::render_family`]) in one transaction.
    pub fn apply(&self, family: Family, rules: &str) -> Result<(), CaptureError> {
        run(
            &family.tool(self.backend, "-restore"),
            &["-w", LOCK_WAIT, "--noflush"],
            Some(rules),
            false,
        )
        .map(|_| ())
    }

    fn install_family(&self, state: &ProxyState, family: Family) -> Result<(), CaptureError> {
        if state.is_empty() {
            // No configuration yet: chains left by a previous run keep
            // working until the first one arrives (the node's pods stay
            // captured and policed); missing chains are created empty.
            for chain in [CHAIN, INBOUND_CHAIN] {
                // Fails when the chain exists: that is the point.
                run(
                    &family.tool(self.backend, ""),
                    &["-w", LOCK_WAIT, "-t", "nat", "-N", chain],
                    None,
                    true,
                )?;
            }
        } else {
            self.apply(family, &self.render_family(state, family))?;
        }
        self.ensure_jumps_first(family)?;
        Ok(())
    }

    /// Installs (or repairs) the chains and the jumps with the rules for
    /// `state`; safe to run any number of times. IPv4 must work; IPv6 is
    /// dropped from [`CaptureRules::families`], with a warning, when the
    /// host cannot take IPv6 nat rules.
    pub fn install(&mut self, state: &ProxyState) -> Result<(), CaptureError> {
        let mut installed = Vec::new();
        for family in self.families.clone() {
            match self.install_family(state, family) {
                Ok(()) => installed.push(family),
                Err(e) if family == Family::V6 => {
                    tracing::warn!(error = %e, "no IPv6 capture on this host (IPv4 only)");
                }
                Err(e) => return Err(e),
            }
        }
        self.families = installed;
        self.share_subnets(state, &Routes::read());
        tracing::info!(interface = ?self.interface(), capture_port = self.capture_port, inbound_port = ?self.inbound_port, families = ?self.families, "capture rules installed");
        Ok(())
    }

    /// What [`CaptureRules::install`] applied, for [`CaptureRules::follow`]
    /// (nothing of its own before the first configuration).
    pub fn rendered(&self, state: &ProxyState) -> Vec<String> {
        self.families
            .iter()
            .map(|f| {
                if state.is_empty() {
                    String::new()
                } else {
                    self.render_family(state, *f)
                }
            })
            .collect()
    }

    /// Keeps the rules in step with the configuration until the task is
    /// dropped, and every [`CaptureRules::recheck`] puts the jumps back in
    /// first place if another agent (kube-proxy, the CNI) inserted rules
    /// ahead of them. A failed update is retried (the previous rules stay).
    ///
    /// The iptables and ip commands run on tokio's blocking threads: one
    /// can wait seconds for the xtables lock (kube-proxy or the CNI holds
    /// it), and on the proxy's single runtime thread that wait would stop
    /// the data path.
    pub async fn follow(
        self: std::sync::Arc<Self>,
        store: std::sync::Arc<ConfigStore>,
        mut applied: Vec<String>,
    ) {
        let mut changes = store.subscribe();
        applied.resize(self.families.len(), String::new());
        // A failed update is retried, sooner first (a busy xtables lock),
        // then less often (a host that lost its nat table).
        let mut retry =
            crate::net::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut reported = None;
        let mut recheck = tokio::time::interval(self.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        recheck.reset();
        loop {
            let state = store.snapshot();
            let mut failed = false;
            // Before the first configuration what is installed is kept.
            if store.is_ready() {
                for (family, applied) in self.families.iter().zip(applied.iter_mut()) {
                    let wanted = self.render_family(&state, *family);
                    if wanted == *applied {
                        continue;
                    }
                    let (family_, wanted_) = (*family, wanted.clone());
                    match self
                        .off_runtime(move |rules| rules.apply(family_, &wanted_))
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(
                                family = ?family,
                                rules = wanted.lines().filter(|l| l.starts_with("-A")).count(),
                                "capture rules updated"
                            );
                            *applied = wanted;
                        }
                        Err(e) => {
                            tracing::warn!(family = ?family, error = %e, "updating capture rules failed; retrying");
                            failed = true;
                        }
                    }
                }
            }
            if store.is_ready() {
                let state = state.clone();
                let mut last = reported.take();
                reported = self
                    .off_runtime(move |rules| {
                        rules.check_interface(&state, &mut last);
                        last
                    })
                    .await;
            }
            if failed {
                tokio::time::sleep(retry.next_delay()).await;
                continue;
            }
            retry.reset();
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = recheck.tick() => {
                    self.off_runtime(|rules| {
                        for family in &rules.families {
                            match rules.ensure_jumps_first(*family) {
                                Ok(true) => tracing::warn!(family = ?family, "rules had been put ahead of the capture jumps (kube-proxy or the CNI?): moved the jumps back first"),
                                Ok(false) => {}
                                Err(e) => tracing::warn!(family = ?family, error = %e, "checking the capture jumps failed"),
                            }
                        }
                    })
                    .await;
                }
            }
        }
    }

    /// Runs `work` (iptables and ip commands) on a blocking thread.
    async fn off_runtime<T: Send + 'static>(
        self: &std::sync::Arc<Self>,
        work: impl FnOnce(&CaptureRules) -> T + Send + 'static,
    ) -> T {
        let rules = self.clone();
        match tokio::task::spawn_blocking(move || work(&rules)).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: so is this task.
            Err(_) => std::future::pending().await,
        }
    }

    /// Finds the interface (`auto`) once the node's pods are known and puts
    /// the jumps in; counts and reports the pods the interface does not
    /// cover. `reported` is the last report: each change is logged once.
    fn check_interface(&self, state: &ProxyState, reported: &mut Option<Vec<(String, String)>>) {
        let routes = Routes::read();
        self.share_subnets(state, &routes);
        let found = self.pod_routes(state, &routes);
        if self.setting == InterfaceSetting::Auto {
            let interfaces: BTreeSet<String> = found.values().cloned().collect();
            let current = self.interface();
            match pattern_for(&interfaces, link_kind) {
                Some(pattern) if current.as_ref() != Some(&pattern) => {
                    tracing::info!(interface = %pattern, previous = ?current, pods = found.len(), "capture interface found from the routes to the node's pods");
                    self.set_interface(pattern);
                    for family in &self.families {
                        // A failure is retried by the periodic recheck.
                        if let Err(e) = self.ensure_jumps_first(*family) {
                            tracing::warn!(family = ?family, error = %e, "installing the capture jumps failed; retrying");
                        }
                    }
                }
                Some(_) => {}
                // No pod of this node is wired yet.
                None if interfaces.is_empty() => return,
                // Unrelated interfaces: the current pattern (if any) stays,
                // and what it misses is reported below.
                None if current.is_some() => {}
                None => {
                    let all: Vec<(String, String)> = found.into_iter().collect();
                    if reported.as_ref() != Some(&all) {
                        tracing::error!(pods = ?all, "the pods of this node are behind unrelated interfaces: nothing is captured until --capture-interface names them");
                        self.outside
                            .set(i64::try_from(all.len()).unwrap_or(i64::MAX));
                        *reported = Some(all);
                    }
                    return;
                }
            }
        }
        let Some(pattern) = self.interface() else {
            return;
        };
        let outside: Vec<(String, String)> = found
            .into_iter()
            .filter(|(_, interface)| !covers(&pattern, interface))
            .collect();
        self.outside
            .set(i64::try_from(outside.len()).unwrap_or(i64::MAX));
        if reported.as_ref() != Some(&outside) {
            if !outside.is_empty() {
                tracing::error!(interface = %pattern, pods = ?outside, "pods of this node are routed by interfaces the capture rules do not match: their traffic is not captured (check --capture-interface, or use auto)");
            } else if reported.is_some() {
                tracing::info!(interface = %pattern, "every pod of this node is behind the capture interface");
            }
            *reported = Some(outside);
        }
    }

    /// Removes the rules (every jump into our chains, then the chains), in
    /// one transaction per family: both families, whichever this run
    /// installed (an earlier run may have had IPv6 where this one has
    /// not). A family whose nat table cannot be read has nothing to remove.
    pub fn remove(&self) -> Result<(), CaptureError> {
        for family in [Family::V4, Family::V6] {
            let listing = run(
                &family.tool(self.backend, ""),
                &["-w", LOCK_WAIT, "-t", "nat", "-S"],
                None,
                !self.families.contains(&family),
            )?;
            if let Some(listing) = listing {
                self.apply(family, &removal(&listing))?;
            }
        }
        tracing::info!(interface = ?self.interface(), "capture rules removed");
        Ok(())
    }
}

/// Whether a rule (as `iptables -S` prints it) jumps into one of our chains.
fn jumps_to_ours(rule: &str) -> bool {
    [CHAIN, INBOUND_CHAIN].iter().any(|chain| {
        rule.strip_suffix(chain)
            .is_some_and(|head| head.ends_with(" -j "))
    })
}

/// What removes our rules from a nat table listed as `iptables -t nat -S`
/// prints it: the jumps into our chains, then the chains that exist.
fn removal(nat: &str) -> String {
    let mut changes = String::from("*nat\n");
    for rule in nat.lines().map(str::trim) {
        if rule.starts_with("-A PREROUTING ") && jumps_to_ours(rule) {
            let _ = writeln!(changes, "-D{}", &rule[2..]);
        }
    }
    for chain in [CHAIN, INBOUND_CHAIN] {
        if nat.lines().any(|l| l.trim() == format!("-N {chain}")) {
            let _ = writeln!(changes, "-F {chain}\n-X {chain}");
        }
    }
    changes.push_str("COMMIT\n");
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::model::{
        Protocol, Service, ServicePort, ServiceType, TargetPort, TrafficPolicy, Workload,
    };
    use ferry_api::ResourceBody;

    fn pod(name: &str, ip: &str, node: &str, mesh: bool) -> ResourceBody {
        ResourceBody::Workload(Workload {
            key: Workload::key_of("shop", name),
            node: Some(node.into()),
            addresses: vec![ip.parse().unwrap()].into(),
            ready: true,
            terminating: false,
            profile: std::sync::Arc::new(ferry_api::model::Profile {
                namespace: "shop".into(),
                service_account: "default".into(),
                labels: Default::default(),
                ports: vec![].into(),
                mesh,
                controller: None,
            }),
        })
    }

    fn service(
        name: &str,
        cluster_ip: &str,
        lb: Option<&str>,
        node_port: Option<u16>,
    ) -> ResourceBody {
        ResourceBody::Service(Box::new(Service {
            namespace: "shop".into(),
            name: name.into(),
            hostname: format!("{name}.shop.svc.cluster.local").into(),
            service_type: if lb.is_some() {
                ServiceType::LoadBalancer
            } else if node_port.is_some() {
                ServiceType::NodePort
            } else {
                ServiceType::ClusterIP
            },
            cluster_ips: vec![cluster_ip.parse().unwrap()],
            headless: false,
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(8080),
                node_port,
            }],
            load_balancer_ips: lb.iter().map(|ip| ip.parse().unwrap()).collect(),
            external_ips: vec![],
            external_name: None,
            client_ip_affinity: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            endpoints: vec![],
            selector: true,
            traffic_distribution: None,
        }))
    }

    fn state(bodies: &[ResourceBody]) -> std::sync::Arc<ProxyState> {
        ConfigStore::holding(bodies).snapshot()
    }

    fn rules() -> CaptureRules {
        CaptureRules {
            node: "node-a".into(),
            setting: InterfaceSetting::Named("br0".into()),
            interface: Mutex::new(Some("br0".to_string())),
            capture_port: 15001,
            inbound_port: Some(15006),
            hbone_port: 15008,
            families: vec![Family::V4, Family::V6],
            kube_proxy_replacement: true,
            backend: Backend::Default,
            recheck: Duration::from_secs(10),
            outside: Gauge::default(),
            shared_subnets: Default::default(),
        }
    }

    /// `service` with one ready endpoint backed by `workload`.
    fn backed_by(mut service: ResourceBody, workload: &str, ip: &str) -> ResourceBody {
        if let ResourceBody::Service(s) = &mut service {
            s.endpoints.push(ferry_api::model::Endpoint {
                workload: Some(format!("shop/{workload}").into()),
                address: ip.parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                placement: std::sync::Arc::new(ferry_api::model::Placement {
                    node: Some("node-b".into()),
                    ports: vec![Some(8080)].into(),
                    hostname: None,
                    node_hints: Vec::new().into(),
                    zone: None,
                    zone_hints: Vec::new().into(),
                }),
            });
        }
        service
    }

    #[test]
    fn beside_kube_proxy_only_connections_with_a_mesh_end_are_taken() {
        let s = state(&[
            pod("web", "10.244.1.10", "node-a", true),
            pod("legacy", "10.244.1.20", "node-a", false),
            pod("api", "10.244.2.10", "node-b", true),
            pod("old", "10.244.2.20", "node-b", false),
            // Backed by a mesh pod (on another node): ours.
            backed_by(
                service("api", "10.96.0.20", None, Some(30090)),
                "api",
                "10.244.2.10",
            ),
            // Backed by pods outside the mesh only: kube-proxy's.
            backed_by(
                service("old", "10.96.0.30", Some("192.0.2.30"), Some(30030)),
                "old",
                "10.244.2.20",
            ),
        ]);
        let lane = CaptureRules {
            kube_proxy_replacement: false,
            ..rules()
        }
        .render(&s);
        // Everything a mesh pod sends; anything to a mesh pod of this node.
        assert!(
            lane.contains("-A FERRY_OUTBOUND -s 10.244.1.10/32 "),
            "{lane}"
        );
        assert!(
            lane.contains("-A FERRY_OUTBOUND -d 10.244.1.10/32 "),
            "{lane}"
        );
        assert!(
            lane.contains("-A FERRY_INBOUND -d 10.244.1.10/32 "),
            "{lane}"
        );
        // The mesh service's address and node port, from anyone.
        assert!(
            lane.contains("-A FERRY_OUTBOUND -d 10.96.0.20/32 "),
            "{lane}"
        );
        assert!(lane.contains("--dport 30090 "), "{lane}");
        // Nothing of the other service, nor of the pod outside the mesh.
        for absent in [
            "10.96.0.30",
            "192.0.2.30",
            "30030",
            "10.244.1.20",
            "10.244.2",
        ] {
            assert!(!lane.contains(absent), "{absent} in {lane}");
        }
        // Replacing kube-proxy, every service is served.
        let all = rules().render(&s);
        for present in ["-d 10.96.0.30/32 ", "-d 192.0.2.30/32 ", "--dport 30030 "] {
            assert!(all.contains(present), "{present} not in {all}");
        }
    }

    #[test]
    fn the_jumps_are_put_first_in_one_transaction() {
        let r = rules();
        let ours = "-P PREROUTING ACCEPT\n-A PREROUTING -i br0 -p tcp -j FERRY_OUTBOUND\n-A PREROUTING ! -i br0 -p tcp -j FERRY_INBOUND\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
        assert_eq!(r.reorder(ours), None);
        // kube-proxy inserted its jump ahead of ours.
        let behind = "-P PREROUTING ACCEPT\n-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n-A PREROUTING -i br0 -p tcp -j FERRY_OUTBOUND\n-A PREROUTING ! -i br0 -p tcp -j FERRY_INBOUND\n";
        assert_eq!(
            r.reorder(behind).as_deref(),
            Some("*nat\n-D PREROUTING -i br0 -p tcp -j FERRY_OUTBOUND\n-D PREROUTING ! -i br0 -p tcp -j FERRY_INBOUND\n-I PREROUTING 1 ! -i br0 -p tcp -j FERRY_INBOUND\n-I PREROUTING 1 -i br0 -p tcp -j FERRY_OUTBOUND\nCOMMIT\n")
        );
        // Nothing yet: inserted.
        assert_eq!(
            r.reorder("-P PREROUTING ACCEPT\n").as_deref(),
            Some("*nat\n-I PREROUTING 1 ! -i br0 -p tcp -j FERRY_INBOUND\n-I PREROUTING 1 -i br0 -p tcp -j FERRY_OUTBOUND\nCOMMIT\n")
        );
        // A previous run's jump for another interface, and a duplicate, go.
        let stale = "-A PREROUTING -i br0 -p tcp -j FERRY_OUTBOUND\n-A PREROUTING ! -i br0 -p tcp -j FERRY_INBOUND\n-A PREROUTING -i cni0 -p tcp -j FERRY_OUTBOUND\n";
        let fix = r.reorder(stale).unwrap();
        assert!(
            fix.contains("-D PREROUTING -i cni0 -p tcp -j FERRY_OUTBOUND\n"),
            "{fix}"
        );
        assert_eq!(fix.matches("-I PREROUTING 1").count(), 2, "{fix}");
    }

    #[test]
    fn removal_takes_every_jump_and_the_chains_that_exist() {
        let nat = "-P PREROUTING ACCEPT\n-N FERRY_OUTBOUND\n-N KUBE-SERVICES\n-A PREROUTING -i br0 -p tcp -j FERRY_OUTBOUND\n-A PREROUTING -j KUBE-SERVICES\n-A FERRY_OUTBOUND -s 10.0.0.1/32 -p tcp -j REDIRECT --to-ports 15001\n";
        assert_eq!(
            removal(nat),
            "*nat\n-D PREROUTING -i br0 -p tcp -j FERRY_OUTBOUND\n-F FERRY_OUTBOUND\n-X FERRY_OUTBOUND\nCOMMIT\n"
        );
        assert_eq!(removal("-P PREROUTING ACCEPT\n"), "*nat\nCOMMIT\n");
    }

    #[test]
    fn rules_follow_the_mesh_pods_of_the_node_and_the_services() {
        let s = state(&[
            pod("web", "10.244.1.10", "node-a", true),
            pod("legacy", "10.244.1.20", "node-a", false),
            pod("remote", "10.244.2.10", "node-b", true),
            service("api", "10.96.0.20", None, None),
            service("web", "10.96.0.10", Some("192.0.2.10"), Some(30080)),
        ]);
        let text = rules().render(&s);
        let want = "\
*nat
:FERRY_OUTBOUND - [0:0]
:FERRY_INBOUND - [0:0]
-A FERRY_OUTBOUND -m addrtype --dst-type LOCAL -p tcp --dport 15008 -j RETURN
-A FERRY_INBOUND -m addrtype --dst-type LOCAL -p tcp --dport 15008 -j RETURN
-A FERRY_OUTBOUND -s 10.244.1.10/32 -p tcp -j REDIRECT --to-ports 15001
-A FERRY_OUTBOUND -d 10.96.0.10/32 -p tcp -j REDIRECT --to-ports 15001
-A FERRY_OUTBOUND -d 10.96.0.20/32 -p tcp -j REDIRECT --to-ports 15001
-A FERRY_OUTBOUND -d 192.0.2.10/32 -p tcp -j REDIRECT --to-ports 15001
-A FERRY_OUTBOUND -m addrtype --dst-type LOCAL -p tcp --dport 30080 -j REDIRECT --to-ports 15001
-A FERRY_OUTBOUND -d 10.244.1.10/32 -p tcp -j REDIRECT --to-ports 15006
-A FERRY_INBOUND -d 10.244.1.10/32 -p tcp -j REDIRECT --to-ports 15006
-A FERRY_INBOUND -d 192.0.2.10/32 -p tcp -j REDIRECT --to-ports 15001
-A FERRY_INBOUND -m addrtype --dst-type LOCAL -p tcp --dport 30080 -j REDIRECT --to-ports 15001
COMMIT
";
        assert_eq!(text, want);
        // Deterministic: the same state renders the same text, so an
        // unrelated change does not rewrite the rules.
        assert_eq!(rules().render(&s), text);
    }

    #[test]
    fn each_family_gets_its_own_addresses() {
        let mut dual = pod("web", "10.244.1.10", "node-a", true);
        if let ResourceBody::Workload(w) = &mut dual {
            w.addresses = [w.addresses[0], "fd00:244:1::10".parse().unwrap()]
                .into_iter()
                .collect();
        }
        let mut svc = service("api", "10.96.0.20", None, None);
        if let ResourceBody::Service(s) = &mut svc {
            s.cluster_ips.push("fd00:96::20".parse().unwrap());
        }
        let s = state(&[dual, svc]);
        let v4 = rules().render_family(&s, Family::V4);
        let v6 = rules().render_family(&s, Family::V6);
        assert!(
            v4.contains("-s 10.244.1.10/32 ") && !v4.contains("fd00"),
            "{v4}"
        );
        assert!(
            v6.contains(
                "-A FERRY_OUTBOUND -s fd00:244:1::10/128 -p tcp -j REDIRECT --to-ports 15001"
            ),
            "{v6}"
        );
        assert!(
            v6.contains("-A FERRY_OUTBOUND -d fd00:96::20/128 -p tcp -j REDIRECT --to-ports 15001"),
            "{v6}"
        );
        assert!(
            v6.contains(
                "-A FERRY_INBOUND -d fd00:244:1::10/128 -p tcp -j REDIRECT --to-ports 15006"
            ),
            "{v6}"
        );
        assert!(!v6.contains("10.244"), "{v6}");
    }

    #[test]
    fn pod_traffic_goes_to_the_node_address_when_it_is_known() {
        use ferry_api::model::{Node, NodeAddress};
        let node = ResourceBody::Node(Box::new(Node {
            name: "node-a".into(),
            addresses: vec![
                NodeAddress {
                    kind: "InternalIP".into(),
                    address: "172.30.0.11".into(),
                },
                NodeAddress {
                    kind: "InternalIP".into(),
                    address: "fd00:30::11".into(),
                },
            ],
            hbone: None,
            zone: None,
        }));
        let mut web = pod("web", "10.244.1.10", "node-a", true);
        if let ResourceBody::Workload(w) = &mut web {
            w.addresses = [w.addresses[0], "fd00:244:1::10".parse().unwrap()]
                .into_iter()
                .collect();
        }
        let s = state(&[node, web]);
        let v4 = rules().render_family(&s, Family::V4);
        // DNAT works on pod interfaces without an address (routed CNIs).
        assert!(v4.contains("-A FERRY_OUTBOUND -s 10.244.1.10/32 -p tcp -j DNAT --to-destination 172.30.0.11:15001"), "{v4}");
        assert!(v4.contains("-A FERRY_OUTBOUND -d 10.244.1.10/32 -p tcp -j DNAT --to-destination 172.30.0.11:15006"), "{v4}");
        // From other nodes the uplink has an address: REDIRECT.
        assert!(
            v4.contains("-A FERRY_INBOUND -d 10.244.1.10/32 -p tcp -j REDIRECT --to-ports 15006"),
            "{v4}"
        );
        let v6 = rules().render_family(&s, Family::V6);
        assert!(
            v6.contains("-j DNAT --to-destination [fd00:30::11]:15001"),
            "{v6}"
        );
    }

    #[test]
    fn a_pod_leaving_the_mesh_gets_its_traffic_back() {
        let before = rules().render(&state(&[pod("web", "10.244.1.10", "node-a", true)]));
        assert!(before.contains("-s 10.244.1.10/32"));
        let after = rules().render(&state(&[pod("web", "10.244.1.10", "node-a", false)]));
        assert!(!after.contains("10.244.1.10"), "{after}");
        // Without an inbound listener, plaintext to pods is left alone.
        let no_inbound = CaptureRules {
            inbound_port: None,
            ..rules()
        }
        .render(&state(&[pod("web", "10.244.1.10", "node-a", true)]));
        assert!(!no_inbound.contains("15006"), "{no_inbound}");
    }
}
