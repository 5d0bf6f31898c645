//! Transparent capture in a network namespace standing for a node: pods
//! (namespaces wired to the node's bridge) reach a ClusterIP, which exists
//! nowhere but in the proxy, with an unmodified curl and an unmodified HTTP
//! server, by address and by name (the proxy answers the pod's DNS); the redirect rules are idempotent, removed on clean shutdown and
//! repaired after a crash. Needs root (see `netns::root_or_skip`).

use std::time::Duration;

use ferry_tests::netns::{root_or_skip, Netns};
use ferry_tests::{binary, wait_for, Process};

const MANIFESTS: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.250.1.1}, {type: InternalIP, address: \"fd00:250:1::1\"}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default, labels: {app: client}}\nspec: {nodeName: n1, containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.250.1.10, podIPs: [{ip: 10.250.1.10}, {ip: \"fd00:250:1::10\"}], conditions: [{type: Ready, status: \"True\"}]}\n---\n\
apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default, labels: {app: web}}\nspec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}\nstatus: {phase: Running, podIP: 10.250.1.11, podIPs: [{ip: 10.250.1.11}, {ip: \"fd00:250:1::11\"}], conditions: [{type: Ready, status: \"True\"}]}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.250.10, clusterIPs: [10.96.250.10, \"fd00:96:250::10\"], ipFamilyPolicy: PreferDualStack, ipFamilies: [IPv4, IPv6], selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n";

fn pod(node: &Netns, name: &str, veth: &str, ip: &str, ip6: &str) -> anyhow::Result<Netns> {
    let pod = Netns::new(name)?;
    node.ip(&[
        "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ])?;
    node.ip(&["link", "set", veth, "master", "br0", "up"])?;
    pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&["route", "add", "default", "via", "10.250.1.1"])?;
    pod.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip6}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    pod.ip(&["-6", "route", "add", "default", "via", "fd00:250:1::1"])?;
    Ok(pod)
}

/// A pod wired as routed CNIs (Calico) do: its own veth with no IPv4
/// address on the node side, a /32 route to it, and a link-local next hop
/// as the pod's gateway.
fn routed_pod(node: &Netns, name: &str, veth: &str, ip: &str, ip6: &str) -> anyhow::Result<Netns> {
    let pod = Netns::new(name)?;
    node.ip(&[
        "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
    ])?;
    node.ip(&["link", "set", veth, "up"])?;
    node.ip(&["route", "add", &format!("{ip}/32"), "dev", veth])?;
    node.ip(&["-6", "addr", "add", "fe80::1/64", "dev", veth, "nodad"])?;
    node.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", veth])?;
    pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])?;
    pod.ip(&["link", "set", "eth0", "up"])?;
    pod.ip(&[
        "route",
        "add",
        "169.254.1.1",
        "dev",
        "eth0",
        "scope",
        "link",
    ])?;
    // The gateway answers with the node side's MAC (what proxy ARP does
    // on a real node).
    let mac = node.exec("cat", &[&format!("/sys/class/net/{veth}/address")])?;
    pod.ip(&[
        "neigh",
        "add",
        "169.254.1.1",
        "lladdr",
        mac.trim(),
        "dev",
        "eth0",
    ])?;
    pod.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])?;
    pod.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{ip6}/128"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    pod.ip(&[
        "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
    ])?;
    Ok(pod)
}

fn start_proxy(node: &Netns, logs: &std::path::Path, generation: u32) -> anyhow::Result<Process> {
    let proxy = binary("ferry-proxy")?.display().to_string();
    let args = node.command(
        &proxy,
        &[
            "--node",
            "n1",
            "--control-plane",
            "http://127.0.0.1:15010",
            "--admin",
            "127.0.0.1:15000",
            "--socks5",
            "127.0.0.1:15080",
            "--hbone",
            "10.250.1.1:15008",
            "--capture-listen",
            "[::]:15001",
            // The client's veth: captured traffic arrives on an interface
            // without an address, so the rules DNAT to the node address.
            "--capture-interface",
            "cali+",
            "--dns-listen",
            "10.250.1.1:53",
        ],
    );
    Process::start(
        "proxy",
        std::path::Path::new("ip"),
        &args,
        logs.join(format!("proxy-{generation}.log")),
    )
}

fn curl(pod: &Netns, url: &str) -> anyhow::Result<String> {
    pod.exec(
        "curl",
        &[
            "-s",
            "-m",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ],
    )
}

/// The jumps into Ferry's chain, in the IPv4 and the IPv6 nat tables.
fn jumps(node: &Netns) -> anyhow::Result<(usize, usize)> {
    let count = |tool: &str| -> anyhow::Result<usize> {
        Ok(node
            .exec(tool, &["-t", "nat", "-S", "PREROUTING"])?
            .lines()
            .filter(|l| l.contains("FERRY_OUTBOUND"))
            .count())
    };
    Ok((count("iptables")?, count("ip6tables")?))
}

#[test]
fn pods_reach_a_cluster_ip_through_capture() -> anyhow::Result<()> {
    if !root_or_skip("pods_reach_a_cluster_ip_through_capture") {
        return Ok(());
    }
    let tag = std::process::id() % 10_000;
    let node = Netns::new(&format!("fc{tag}-node"))?;
    node.ip(&["link", "add", "br0", "type", "bridge"])?;
    node.ip(&["addr", "add", "10.250.1.1/24", "dev", "br0"])?;
    node.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:250:1::1/64",
        "dev",
        "br0",
        "nodad",
    ])?;
    node.ip(&["link", "set", "br0", "up"])?;
    let client = routed_pod(
        &node,
        &format!("fc{tag}-client"),
        "cali1",
        "10.250.1.10",
        "fd00:250:1::10",
    )?;
    // The pod's resolver is the node proxy, with the pod's search path.
    client.set_resolv_conf(
        "nameserver 10.250.1.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
    )?;
    let web = pod(
        &node,
        &format!("fc{tag}-web"),
        "vweb",
        "10.250.1.11",
        "fd00:250:1::11",
    )?;

    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    std::fs::write(manifests.join("cluster.yaml"), MANIFESTS)?;
    let logs = dir.path();
    let cp = binary("ferry-control-plane")?.display().to_string();
    let manifests_arg = manifests.display().to_string();
    let _control_plane = Process::start(
        "control-plane",
        std::path::Path::new("ip"),
        &node.command(
            &cp,
            &["--manifests", &manifests_arg, "--listen", "127.0.0.1:15010"],
        ),
        logs.join("control-plane.log"),
    )?;
    let _server = Process::start(
        "web",
        std::path::Path::new("ip"),
        &web.command("python3", &["-m", "http.server", "8080", "--bind", "::"]),
        logs.join("web.log"),
    )?;
    let mut proxy = start_proxy(&node, logs, 0)?;
    let ready = |p: &Process| {
        wait_for("proxy ready", Duration::from_secs(20), || {
            Ok((node
                .exec("curl", &["-sf", "127.0.0.1:15000/healthz/ready"])
                .is_ok())
            .then_some(()))
        })
        .with_context_log(p)
    };
    ready(&proxy)?;
    wait_for("web server up", Duration::from_secs(20), || {
        Ok(
            (curl(&client, "http://10.250.1.11:8080/").ok().as_deref() == Some("200"))
                .then_some(()),
        )
    })?;

    // The cluster IP exists only in the proxy: only capture can answer it,
    // over IPv4 and over IPv6 (the original destination read with
    // IP6T_SO_ORIGINAL_DST from a dual-stack listener).
    assert_eq!(
        curl(&client, "http://10.96.250.10/")?,
        "200",
        "{}",
        proxy.log()
    );
    assert_eq!(
        curl(&client, "http://[fd00:96:250::10]/")?,
        "200",
        "{}",
        proxy.log()
    );
    assert_eq!(jumps(&node)?, (1, 1));

    // Clean shutdown removes every rule.
    assert!(
        proxy.terminate(Duration::from_secs(10)),
        "proxy did not stop on SIGTERM"
    );
    assert_eq!(jumps(&node)?, (0, 0), "rules left after a clean shutdown");
    for tool in ["iptables", "ip6tables"] {
        let rules = node.exec(tool, &["-t", "nat", "-S"])?;
        assert!(!rules.contains("FERRY_"), "{tool}: {rules}");
    }

    // A crash leaves them; the next start repairs them without duplicates.
    let mut proxy = start_proxy(&node, logs, 1)?;
    ready(&proxy)?;
    proxy.kill();
    assert_eq!(jumps(&node)?, (1, 1), "a crash leaves the rules in place");
    let proxy = start_proxy(&node, logs, 2)?;
    ready(&proxy)?;
    assert_eq!(jumps(&node)?, (1, 1), "restart repaired, not duplicated");
    assert_eq!(
        curl(&client, "http://10.96.250.10/")?,
        "200",
        "{}",
        proxy.log()
    );
    Ok(())
}

trait WithLog<T> {
    fn with_context_log(self, p: &Process) -> anyhow::Result<T>;
}

impl<T> WithLog<T> for anyhow::Result<T> {
    fn with_context_log(self, p: &Process) -> anyhow::Result<T> {
        self.map_err(|e| e.context(format!("--- {} log ---\n{}", p.name(), p.log())))
    }
}
