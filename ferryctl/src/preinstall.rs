//! `ferryctl check --pre-install`: whether this node can run Ferry's
//! proxy, and how to fix what it lacks. It reads the node (the kernel and
//! its modules, sysctls, iptables, kube-proxy's mode, the CNI, the
//! proxy's ports) and, when a kubeconfig is at hand, the API server's
//! version. Each check passes, warns, fails (with a fix) or is skipped
//! (with why). Run it on each node, or in a host-network pod.
//!
//! The requirements are the ones `docs/operations.md` lists ("Node
//! requirements"); the iptables backend is decided by the proxy's own
//! rule ([`ferry_core::iptables::choose`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use ferryctl::output::{print, Output};
use serde::Serialize;

/// The oldest Kubernetes the chart supports (`Chart.yaml`).
pub const MIN_KUBERNETES: (u32, u32) = (1, 29);

/// The oldest kernel the proxy is known to work on.
pub const MIN_KERNEL: (u32, u32) = (4, 19);

/// The proxy's ports on each node: address, port, what.
pub const PORTS: [(&str, u16, &str); 6] = [
    ("127.0.0.1", 15000, "admin"),
    ("0.0.0.0", 15001, "capture"),
    ("0.0.0.0", 15006, "inbound plaintext"),
    ("0.0.0.0", 15008, "HBONE"),
    ("0.0.0.0", 15020, "metrics and health"),
    ("127.0.0.1", 15080, "SOCKS5"),
];

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
    Skip,
}

/// One check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Outcome,
    pub detail: String,
    /// What to do about a failure or a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(check: impl Into<String>, status: Outcome, detail: impl Into<String>) -> Self {
        Self {
            check: check.into(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// The report (`--output json|yaml`).
#[derive(Debug, Serialize)]
pub struct Report {
    /// No check failed.
    pub ok: bool,
    pub checks: Vec<Check>,
}

/// `major.minor` of a version string (`6.1.0-18-amd64`, `v1.31.2`).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

fn kernel(release: &str) -> Check {
    match major_minor(release) {
        Some(v) if v >= MIN_KERNEL => Check::new("kernel", Outcome::Pass, format!("Linux {release}")),
        Some(_) => Check::new("kernel", Outcome::Fail, format!("Linux {release} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1))
            .fix("upgrade the node's kernel (every supported Debian, Ubuntu, RHEL and cloud image has a newer one)"),
        None => Check::new("kernel", Outcome::Warn, format!("cannot read the kernel's version from {release:?}")),
    }
}

/// The kernel configuration option of a module, for the fix.
fn config_option(module: &str) -> &'static str {
    match module {
        "nf_conntrack" => "CONFIG_NF_CONNTRACK",
        "nf_nat" => "CONFIG_NF_NAT",
        "xt_REDIRECT" => "CONFIG_NETFILTER_XT_TARGET_REDIRECT",
        "xt_nat" => "CONFIG_NETFILTER_XT_NAT",
        "xt_addrtype" => "CONFIG_NETFILTER_XT_MATCH_ADDRTYPE",
        "xt_mark" => "CONFIG_NETFILTER_XT_MARK",
        "xt_connmark" => "CONFIG_NETFILTER_XT_CONNMARK",
        "nf_tables" => "CONFIG_NF_TABLES",
        "nft_chain_nat" => "CONFIG_NFT_NAT",
        "nft_compat" => "CONFIG_NFT_COMPAT",
        "iptable_nat" => "CONFIG_IP_NF_NAT",
        "iptable_mangle" => "CONFIG_IP_NF_MANGLE",
        "br_netfilter" => "CONFIG_BRIDGE_NETFILTER",
        _ => "the matching CONFIG_ option",
    }
}

/// What the kernel has of its modules: loaded, built in, loadable.
#[derive(Debug, Default)]
pub struct Modules {
    pub loaded: BTreeSet<String>,
    pub builtin: BTreeSet<String>,
    pub loadable: BTreeSet<String>,
    /// Whether `/lib/modules/<release>` could be read (else only loaded
    /// modules are known).
    pub listed: bool,
}

/// A module's name as the kernel lists it (`-` and `_` are one).
fn module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module names in a `modules.builtin` or `modules.dep` file (paths
/// like `kernel/net/netfilter/xt_REDIRECT.ko[.xz]`).
fn module_paths(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split(':').next())
        .filter_map(|path| path.rsplit('/').next())
        .filter_map(|file| file.split(".ko").next())
        .filter(|n| !n.is_empty())
        .map(module_name)
        .collect()
}

impl Modules {
    pub fn read(release: &str) -> Self {
        let loaded = std::fs::read_to_string("/proc/modules")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(module_name)
            .collect();
        let dir = Path::new("/lib/modules").join(release);
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"));
        let dep = std::fs::read_to_string(dir.join("modules.dep"));
        Self {
            loaded,
            listed: builtin.is_ok() || dep.is_ok(),
            builtin: module_paths(&builtin.unwrap_or_default()),
            loadable: module_paths(&dep.unwrap_or_default()),
        }
    }

    fn check(&self, module: &str, why: &str) -> Check {
        let name = format!("kernel module {module}");
        let key = module_name(module);
        if self.loaded.contains(&key) {
            Check::new(name, Outcome::Pass, format!("loaded ({why})"))
        } else if self.builtin.contains(&key) {
            Check::new(name, Outcome::Pass, format!("built in ({why})"))
        } else if self.loadable.contains(&key) {
            Check::new(
                name,
                Outcome::Pass,
                format!("loadable; the kernel loads it with the first rule that needs it ({why})"),
            )
        } else if !self.listed {
            Check::new(
                name,
                Outcome::Warn,
                format!("not loaded, and /lib/modules of this kernel is not readable here ({why})"),
            )
            .fix(format!(
                "run the check on the node itself, or `modprobe {module}` there"
            ))
        } else {
            Check::new(name, Outcome::Fail, format!("not in this kernel ({why})")).fix(format!(
                "install the kernel's extra modules package, or build the kernel with {}",
                config_option(module)
            ))
        }
    }
}

/// The rules capture and client addresses need, tried for real in a
/// throwaway network namespace: (what, table, rule, modules behind it).
const PROBES: [(&str, &str, &str, &str); 4] = [
    (
        "REDIRECT and addrtype (capture)",
        "nat",
        "-A OUTPUT -p tcp -m addrtype --dst-type LOCAL -j REDIRECT --to-ports 15001",
        "nf_conntrack, nf_nat, xt_REDIRECT, xt_addrtype",
    ),
    (
        "DNAT (capture on routed CNIs)",
        "nat",
        "-A OUTPUT -p tcp -d 192.0.2.1 -j DNAT --to-destination 127.0.0.1:15001",
        "xt_nat",
    ),
    (
        "mark and CONNMARK (client addresses)",
        "mangle",
        "-A OUTPUT -m mark --mark 0x539/0xfff -j CONNMARK --save-mark --nfmask 0xfff --ctmask 0xfff",
        "xt_mark, xt_connmark",
    ),
    (
        "connmark and MARK (client addresses)",
        "mangle",
        "-A PREROUTING -m connmark --mark 0x539/0xfff -j MARK --set-xmark 0x53a/0xfff",
        "xt_mark, xt_connmark",
    ),
];

/// Tries [`PROBES`] with `program` (`iptables-nft`, `iptables-legacy`) in
/// a network namespace of a short-lived thread, which goes with it: the
/// node's own rules are never touched. `None` when that cannot be done
/// (not root, or no such program).
fn netfilter_probes(program: &str) -> Option<Vec<Check>> {
    if !ferryctl::lab::netns::is_root() {
        return None;
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Option<Vec<Check>> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
                let mut checks = Vec::new();
                for (what, table, rule, modules) in PROBES {
                    let mut args = vec!["-w", "5", "-t", table];
                    args.extend(rule.split_whitespace());
                    // Started from this thread: in its namespace.
                    let out = Command::new(program)
                        .args(&args)
                        .stdin(Stdio::null())
                        .output()
                        .ok()?;
                    let name = format!("netfilter: {what}");
                    checks.push(if out.status.success() {
                        Check::new(name, Outcome::Pass, format!("a rule was accepted ({program})"))
                    } else {
                        Check::new(
                            name,
                            Outcome::Fail,
                            format!(
                                "{program} refused `-t {table} {rule}`: {}",
                                String::from_utf8_lossy(&out.stderr).trim()
                            ),
                        )
                        .fix(format!(
                            "load the kernel modules ({modules}: `modprobe` each), or build the kernel with them"
                        ))
                    });
                }
                Some(checks)
            })
            .join()
            .ok()
            .flatten()
    })
}

/// The rules of a backend's `*-save`, or `None` when it cannot run.
fn save(program: &str) -> Option<String> {
    let out = Command::new(program)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The iptables backend the proxy would use, and whether rules are split
/// between both.
fn iptables() -> (Check, Option<ferry_core::iptables::Backend>, String) {
    use ferry_core::iptables::{choose, rules, Backend};
    let nft = save("iptables-nft-save");
    let legacy = save("iptables-legacy-save");
    let (nft, legacy) = match (nft, legacy) {
        (None, None) => {
            let plain = save("iptables-save");
            return (
                Check::new(
                    "iptables backend",
                    Outcome::Warn,
                    if plain.is_some() {
                        "only plain `iptables` here: cannot tell the backends apart"
                    } else {
                        "no iptables on this host: the proxy's image carries its own, but the node's rules cannot be inspected"
                    },
                )
                .fix("run the check in the proxy's image (it has iptables-nft and iptables-legacy), or install Debian's iptables"),
                None,
                plain.unwrap_or_default(),
            );
        }
        (nft, legacy) => (nft.unwrap_or_default(), legacy.unwrap_or_default()),
    };
    let choice = choose(&[&nft], &[&legacy]);
    let (n, l) = (rules(&[&nft]), rules(&[&legacy]));
    let name = |b: Backend| match b {
        Backend::Nft => "nf_tables",
        Backend::Legacy => "legacy",
    };
    let detail = format!(
        "nf_tables holds {n} rules, legacy {l}; the proxy will use {} ({})",
        name(choice.backend),
        choice.reason
    );
    let all = format!("{nft}\n{legacy}");
    let check = if n > 0 && l > 0 {
        Check::new("iptables backend", Outcome::Warn, detail).fix(
            "rules in both backends: make sure kube-proxy, the CNI and the proxy agree (chart value proxy.iptablesBackend overrides the choice)",
        )
    } else {
        Check::new("iptables backend", Outcome::Pass, detail)
    };
    (check, Some(choice.backend), all)
}

/// kube-proxy's mode, from what it leaves on the node.
fn kube_proxy(saved: &str) -> Check {
    let nft_tables = Command::new("nft")
        .args(["list", "tables"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if nft_tables
        .lines()
        .any(|l| l.trim().ends_with(" kube-proxy"))
    {
        return Check::new("kube-proxy", Outcome::Fail, "kube-proxy runs in nftables mode (its table `kube-proxy`)")
            .fix("run kube-proxy in iptables mode, or without kube-proxy with the chart value proxy.kubeProxyReplacement=true: Ferry cannot put its capture ahead of kube-proxy's nftables chains");
    }
    if Path::new("/sys/class/net/kube-ipvs0").exists() {
        return Check::new(
            "kube-proxy",
            Outcome::Warn,
            "kube-proxy runs in IPVS mode (interface kube-ipvs0): not tested with Ferry",
        )
        .fix(
            "prefer kube-proxy's iptables mode; with IPVS, verify with `helm test` after install",
        );
    }
    if saved.lines().any(|l| l.starts_with(":KUBE-SERVICES ")) {
        return Check::new(
            "kube-proxy",
            Outcome::Pass,
            "kube-proxy runs in iptables mode: keep proxy.kubeProxyReplacement=false (the chart's default)",
        );
    }
    Check::new(
        "kube-proxy",
        Outcome::Pass,
        "no kube-proxy rules here: set proxy.kubeProxyReplacement=true if the cluster runs without kube-proxy",
    )
}

/// The plugin types of the CNI configurations in `dir`.
pub fn cni_plugins(dir: &Path) -> std::io::Result<Vec<(String, Vec<String>)>> {
    let mut found = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"))
        })
        .collect();
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Ok(config) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let mut types: Vec<String> = config["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&config))
            .filter_map(|p| p["type"].as_str().map(str::to_string))
            .collect();
        types.dedup();
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push((name, types));
    }
    Ok(found)
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn cni(dir: &Path, modules: &Modules) -> Vec<Check> {
    let plugins = match cni_plugins(dir) {
        Ok(plugins) if !plugins.is_empty() => plugins,
        Ok(_) | Err(_) => {
            return vec![Check::new(
                "CNI",
                Outcome::Warn,
                format!("no CNI configuration in {}", dir.display()),
            )
            .fix("install the cluster's CNI first (or give --cni-dir where it keeps its configuration)")];
        }
    };
    let (file, types) = &plugins[0];
    let list = types.join(", ");
    let mut checks = Vec::new();
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("cilium-cni") {
        checks.push(
            Check::new("CNI", Outcome::Warn, format!("{file}: Cilium ({list})")).fix(
                "with eBPF host routing or Cilium's kube-proxy replacement, pod traffic bypasses netfilter and is not captured: turn both off",
            ),
        );
    } else {
        checks.push(Check::new("CNI", Outcome::Pass, format!("{file}: {list}")));
    }
    if has("bridge") || has("flannel") {
        let call = read_sysctl("/proc/sys/net/bridge/bridge-nf-call-iptables");
        let loaded =
            modules.loaded.contains("br_netfilter") || modules.builtin.contains("br_netfilter");
        let check = match call.as_deref() {
            Some("1") => Check::new("bridge netfilter", Outcome::Pass, "net.bridge.bridge-nf-call-iptables=1 (a bridge CNI: pods of one node meet on the bridge)"),
            Some(_) => Check::new("bridge netfilter", Outcome::Fail, "net.bridge.bridge-nf-call-iptables=0: connections between pods of one node bypass iptables")
                .fix("sysctl -w net.bridge.bridge-nf-call-iptables=1 (and persist it in /etc/sysctl.d)"),
            None => Check::new("bridge netfilter", Outcome::Fail, format!("br_netfilter is {}: connections between pods of one node bypass iptables", if loaded { "built in but its sysctl is not visible here" } else { "not loaded" }))
                .fix("modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1 (persist both: /etc/modules-load.d, /etc/sysctl.d)"),
        };
        checks.push(check);
    }
    checks
}

fn ports() -> Vec<Check> {
    PORTS
        .iter()
        .map(|(address, port, what)| {
            let name = format!("port {port}");
            match std::net::TcpListener::bind((*address, *port)) {
                Ok(_) => Check::new(name, Outcome::Pass, format!("free ({what}, {address})")),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::new(
                    name,
                    Outcome::Fail,
                    format!("in use ({what} needs it, on {address})"),
                )
                .fix(format!(
                    "free it: `ss -ltnp 'sport = :{port}'` names the process (the proxy runs with hostNetwork)"
                )),
                Err(e) => Check::new(name, Outcome::Warn, format!("cannot test ({e})")),
            }
        })
        .collect()
}

fn ip_forward() -> Check {
    match read_sysctl("/proc/sys/net/ipv4/ip_forward").as_deref() {
        Some("1") => Check::new("IPv4 forwarding", Outcome::Pass, "net.ipv4.ip_forward=1"),
        Some(_) => Check::new("IPv4 forwarding", Outcome::Fail, "net.ipv4.ip_forward=0: the node does not route its pods' traffic")
            .fix("sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d; the CNI normally sets it)"),
        None => Check::new("IPv4 forwarding", Outcome::Warn, "cannot read net.ipv4.ip_forward"),
    }
}

async fn kubernetes() -> Check {
    let name = "Kubernetes version";
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(e) => {
            return Check::new(
                name,
                Outcome::Skip,
                format!("no cluster configuration (KUBECONFIG, ~/.kube/config or in-cluster): {e}"),
            )
        }
    };
    let client = match kube::Client::try_from(config) {
        Ok(client) => client,
        Err(e) => return Check::new(name, Outcome::Fail, format!("cannot build a client: {e}")),
    };
    match client.apiserver_version().await {
        Ok(info) => {
            let version = format!("{}.{}", info.major, info.minor);
            match major_minor(&version) {
                Some(v) if v >= MIN_KUBERNETES => Check::new(
                    name,
                    Outcome::Pass,
                    format!(
                        "{} (needs {}.{} or later)",
                        info.git_version, MIN_KUBERNETES.0, MIN_KUBERNETES.1
                    ),
                ),
                Some(_) => Check::new(
                    name,
                    Outcome::Fail,
                    format!(
                        "{} is older than {}.{}",
                        info.git_version, MIN_KUBERNETES.0, MIN_KUBERNETES.1
                    ),
                )
                .fix("upgrade the cluster (the chart needs Kubernetes 1.29 or later)"),
                None => Check::new(
                    name,
                    Outcome::Warn,
                    format!("cannot read the version {version:?}"),
                ),
            }
        }
        Err(e) => Check::new(
            name,
            Outcome::Fail,
            format!("the API server did not answer /version: {e}"),
        )
        .fix("check the kubeconfig's server and credentials (`kubectl version`)"),
    }
}

/// Runs every check.
pub async fn checks(cni_dir: &Path) -> Report {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let modules = Modules::read(&release);
    let mut checks = vec![kernel(&release)];
    let (iptables, backend, saved) = iptables();
    let program = match backend {
        Some(ferry_core::iptables::Backend::Nft) => "iptables-nft",
        Some(ferry_core::iptables::Backend::Legacy) => "iptables-legacy",
        None => "iptables",
    };
    // The kernel's netfilter features: tried for real where possible,
    // else read from its module lists.
    match netfilter_probes(program) {
        Some(probes) => checks.extend(probes),
        None => checks.extend(module_checks(&modules, backend)),
    }
    checks.push(ip_forward());
    checks.push(iptables);
    checks.push(kube_proxy(&saved));
    checks.extend(cni(cni_dir, &modules));
    checks.extend(ports());
    checks.push(kubernetes().await);
    Report {
        ok: checks.iter().all(|c| c.status != Outcome::Fail),
        checks,
    }
}

/// The kernel modules capture needs, from the kernel's module lists.
fn module_checks(modules: &Modules, backend: Option<ferry_core::iptables::Backend>) -> Vec<Check> {
    let mut checks = Vec::new();
    for (module, why) in [
        (
            "nf_conntrack",
            "connection tracking: the proxy reads where a captured connection was going",
        ),
        ("nf_nat", "NAT: capture redirects connections"),
        ("xt_REDIRECT", "the capture rules' REDIRECT target"),
        ("xt_nat", "the DNAT target (routed CNIs)"),
        ("xt_addrtype", "the addrtype match of the capture rules"),
        (
            "xt_mark",
            "client addresses: marks on the proxy's connections",
        ),
        (
            "xt_connmark",
            "client addresses: replies routed back to the proxy",
        ),
    ] {
        checks.push(modules.check(module, why));
    }
    let backend_modules: &[(&str, &str)] = match backend {
        Some(ferry_core::iptables::Backend::Legacy) => &[
            ("iptable_nat", "the nat table, legacy backend"),
            ("iptable_mangle", "the mangle table, legacy backend"),
        ],
        _ => &[
            ("nf_tables", "nf_tables backend"),
            ("nft_chain_nat", "nat chains, nf_tables backend"),
            ("nft_compat", "iptables matches on nf_tables"),
        ],
    };
    for (module, why) in backend_modules {
        checks.push(modules.check(module, why));
    }
    checks
}

/// The report for people.
pub fn table(report: &Report) -> String {
    let mut rows = vec![vec!["CHECK".to_string(), "STATUS".into(), "DETAIL".into()]];
    for c in &report.checks {
        rows.push(vec![
            c.check.clone(),
            match c.status {
                Outcome::Pass => "ok",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            }
            .into(),
            c.detail.clone(),
        ]);
    }
    let mut out = ferryctl::live::status::columns(&rows);
    let fixes: Vec<&Check> = report.checks.iter().filter(|c| c.fix.is_some()).collect();
    if !fixes.is_empty() {
        out.push_str("\nTo fix:\n");
        for c in fixes {
            out.push_str(&format!(
                "  {}: {}\n",
                c.check,
                c.fix.as_deref().unwrap_or_default()
            ));
        }
    }
    out.push_str(if report.ok {
        "\nthis node can run Ferry's proxy\n"
    } else {
        "\nthis node cannot run Ferry's proxy yet: fix the failures above\n"
    });
    out
}

/// Runs `ferryctl check --pre-install`: exit 0 when nothing fails, 1
/// otherwise.
pub fn run(cni_dir: &Path, output: Output) -> ExitCode {
    let runtime = match ferryctl::live::runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ferryctl check: {e}");
            return ExitCode::from(2);
        }
    };
    let report = runtime.block_on(checks(cni_dir));
    if !print(&report, output, table, "check") {
        return ExitCode::from(2);
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_as_major_and_minor() {
        assert_eq!(major_minor("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(major_minor("v1.31.2"), Some((1, 31)));
        assert_eq!(major_minor("1.29+"), Some((1, 29)));
        assert_eq!(major_minor("garbage"), None);
        assert_eq!(kernel("4.14.0").status, Outcome::Fail);
        assert!(kernel("4.14.0").fix.is_some());
        assert_eq!(kernel("5.10.0-28-amd64").status, Outcome::Pass);
    }

    #[test]
    fn modules_are_found_loaded_built_in_or_loadable() {
        let modules = Modules {
            loaded: ["nf_conntrack".to_string()].into(),
            builtin: module_paths("kernel/net/netfilter/nf_nat.ko\n"),
            loadable: module_paths(
                "kernel/net/netfilter/xt_REDIRECT.ko.xz: kernel/net/netfilter/nf_nat.ko\n",
            ),
            listed: true,
        };
        let status = |m: &str| modules.check(m, "why").status;
        assert_eq!(status("nf_conntrack"), Outcome::Pass);
        assert_eq!(status("nf_nat"), Outcome::Pass);
        assert_eq!(status("xt_REDIRECT"), Outcome::Pass);
        let missing = modules.check("xt_addrtype", "why");
        assert_eq!(missing.status, Outcome::Fail);
        assert!(missing
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("CONFIG_NETFILTER_XT_MATCH_ADDRTYPE")));
        let unknown = Modules::default().check("xt_nat", "why");
        assert_eq!(unknown.status, Outcome::Warn);
    }

    #[test]
    fn cni_configurations_name_their_plugins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10-flannel.conflist"),
            r#"{"name":"cbr0","plugins":[{"type":"flannel"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("99-bad.conf"), "not json").unwrap();
        let plugins = cni_plugins(dir.path()).unwrap();
        assert_eq!(
            plugins,
            [(
                "10-flannel.conflist".to_string(),
                vec!["flannel".to_string(), "portmap".to_string()]
            )]
        );
    }
}
