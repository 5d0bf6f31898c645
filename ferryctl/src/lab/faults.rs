//! The fault suite of the example cluster: real traffic through the mesh
//! while a part fails, one line per case and a table of figures. Every
//! load is bounded in count and time; every fault is undone before the
//! next case (a frozen proxy is thawed, a stopped control plane started).
//!
//! - the control plane killed under load: no request to a known service
//!   fails;
//! - a proxy restarted while the control plane is away: it starts from its
//!   saved configuration and certificates, allowed traffic flows, a pair
//!   the policy denies stays denied, and the link carries only TLS;
//! - a destination proxy frozen (SIGSTOP): requests to a service with
//!   endpoints on both nodes fail over within the deadline;
//! - endpoint churn under load: once a proxy knows a pod is gone, no
//!   connection goes to it;
//! - 200 in-place saves of a watched manifest: no proxy drops a workload;
//! - certificate rotation under a long transfer (with short-lived
//!   certificates, [`super::LabOptions`]): every byte arrives;
//! - floods of idle connections on a proxy's admin and HBONE ports and of
//!   DNS queries: descriptors and memory stay bounded, traffic keeps
//!   flowing.

use std::time::{Duration, Instant};

use super::{netns, Lab};

/// What one fault case saw.
#[derive(Debug, Clone, Default)]
pub struct FaultResult {
    pub case: String,
    pub ok: bool,
    pub saw: String,
    /// Requests sent during the fault, and how many failed.
    pub requests: usize,
    pub failures: usize,
    /// The slowest request.
    pub slowest: Duration,
    /// The affected proxy's open descriptors and resident memory (KiB),
    /// before and at the peak of the fault.
    pub fds: Option<(usize, usize)>,
    pub rss_kib: Option<(u64, u64)>,
}

/// The client and service every case loads: the frontend (node-a) to the
/// api service (round robin over endpoints on node-a and node-b).
const CLIENT: &str = "shop/frontend";
const SERVICE: &str = "http://api.shop/";

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// A process's resident memory, KiB; 0 when it cannot be read.
fn rss_kib(pid: u32) -> u64 {
    super::process::rss_kib(pid).unwrap_or(0)
}

/// Requests `SERVICE` from `CLIENT` `count` times (each a new connection),
/// calling `during(i)` before request `i`; the failures and the slowest.
fn load(
    lab: &mut Lab,
    count: usize,
    mut during: impl FnMut(&mut Lab, usize) -> anyhow::Result<()>,
) -> anyhow::Result<(usize, Duration, Vec<String>)> {
    let mut failures = 0;
    let mut slowest = Duration::ZERO;
    let mut errors = Vec::new();
    for i in 0..count {
        during(lab, i)?;
        let started = Instant::now();
        match lab.curl(CLIENT, SERVICE) {
            Ok(body) if body.starts_with("shop/backend-") => {}
            Ok(body) => {
                failures += 1;
                errors.push(format!("answered {body:?}"));
            }
            Err(e) => {
                failures += 1;
                errors.push(e.to_string().lines().next().unwrap_or("").to_string());
            }
        }
        slowest = slowest.max(started.elapsed());
    }
    errors.truncate(3);
    Ok((failures, slowest, errors))
}

/// One fault case: it runs on the lab and says what it saw.
type Case = fn(&mut Lab) -> anyhow::Result<FaultResult>;

impl Lab {
    /// Runs every fault case (see the module doc).
    pub fn fault_suite(&mut self) -> Vec<FaultResult> {
        let cases: [(&str, Case); 6] = [
            ("control plane killed under load", Lab::control_plane_killed),
            (
                "proxy restarted while the control plane is away",
                Lab::proxy_restarted_alone,
            ),
            ("destination proxy frozen", Lab::destination_frozen),
            ("endpoint churn under load", Lab::endpoint_churn),
            ("200 in-place manifest edits", Lab::in_place_edits),
            ("admin, HBONE and DNS floods", Lab::floods),
        ];
        self.run_cases(&cases)
    }

    /// The case that needs short-lived certificates (a lab built with
    /// [`super::LabOptions::workload_cert_ttl`] of a few seconds; the other
    /// cases need certificates that outlive a control-plane outage).
    pub fn rotation_suite(&mut self) -> Vec<FaultResult> {
        self.run_cases(&[(
            "certificate rotation under a long transfer",
            Lab::rotation_under_transfer,
        )])
    }

    fn run_cases(&mut self, cases: &[(&str, Case)]) -> Vec<FaultResult> {
        cases
            .iter()
            .map(|(case, run)| {
                let mut result = run(self).unwrap_or_else(|e| FaultResult {
                    ok: false,
                    saw: format!("{e:#}"),
                    ..FaultResult::default()
                });
                result.case = (*case).into();
                result
            })
            .collect()
    }

    fn control_plane_killed(&mut self) -> anyhow::Result<FaultResult> {
        let (failures, slowest, errors) = load(self, 60, |lab, i| match i {
            20 => lab.signal("control-plane", "KILL"),
            40 => lab.restart("control-plane"),
            _ => Ok(()),
        })?;
        Ok(FaultResult {
            ok: failures == 0,
            saw: format!(
                "60 requests, killed at 20, restarted at 40: {failures} failed {errors:?}"
            ),
            requests: 60,
            failures,
            slowest,
            ..FaultResult::default()
        })
    }

    fn proxy_restarted_alone(&mut self) -> anyhow::Result<FaultResult> {
        // Let the proxy's state folder catch up, then take the control
        // plane away; it comes back whatever the case found.
        std::thread::sleep(Duration::from_millis(1_500));
        self.stop("control-plane")?;
        let outcome = self.restart_alone();
        let back = self.restart("control-plane");
        let result = outcome?;
        back?;
        Ok(result)
    }

    /// Restarts node-a's proxy while the control plane is stopped, and
    /// checks what it does.
    fn restart_alone(&mut self) -> anyhow::Result<FaultResult> {
        let node = self
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        self.restart(&node)?;
        let ns = self
            .netns(&node)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        super::wait_for("the restarted proxy", Duration::from_secs(20), || {
            let ready = netns::run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns,
                    "curl",
                    "-sf",
                    "127.0.0.1:15000/healthz/ready",
                ],
            );
            Ok(ready.ok().map(|_| ()))
        })?;
        // Allowed traffic flows, across nodes only inside TLS...
        let marker = format!("ferry-fault-{}", std::process::id());
        let mut across = String::new();
        let link = self.capture_link(&node, &[&marker], || {
            across = self.curl(CLIENT, &format!("http://10.244.2.11:9090/{marker}"))?;
            Ok(())
        })?;
        let only_tls = link.only_tls(15008, &[15008, 15010]);
        let (failures, slowest, errors) = load(self, 20, |_, _| Ok(()))?;
        // ...and the pair the policy denies stays denied (the client,
        // outside the mesh on node-b, to backend-1 on node-a: policed
        // inbound by the restarted proxy).
        let denied = self
            .curl("default/client", "http://10.244.1.11:9090/")
            .is_err();
        let ok = failures == 0 && denied && only_tls.is_ok() && across == "shop/backend-2";
        Ok(FaultResult {
            ok,
            saw: format!(
                "ready on its saved state; {} allowed requests, {failures} failed {errors:?}; denied pair {}; link: {}",
                20 + 1,
                if denied { "refused" } else { "ANSWERED" },
                only_tls.unwrap_or_else(|e| e)
            ),
            requests: 21,
            failures,
            slowest,
            ..FaultResult::default()
        })
    }

    fn destination_frozen(&mut self) -> anyhow::Result<FaultResult> {
        let Some(node_b) = self.nodes.get(1).map(|n| n.name.clone()) else {
            anyhow::bail!("the cluster has one node");
        };
        self.signal(&node_b, "STOP")?;
        let outcome = load(self, 12, |_, _| Ok(()));
        self.signal(&node_b, "CONT")?;
        let (failures, slowest, errors) = outcome?;
        // Failing over costs at most the lab's 2 s connect/handshake
        // deadline, plus curl's own work.
        let ok = failures == 0 && slowest < Duration::from_secs(4);
        Ok(FaultResult {
            ok,
            saw: format!(
                "12 requests with {node_b}'s proxy frozen: {failures} failed {errors:?}, slowest {} ms",
                slowest.as_millis()
            ),
            requests: 12,
            failures,
            slowest,
            ..FaultResult::default()
        })
    }

    /// Endpoints of `service` in a node's proxy.
    fn endpoints_of(&self, node: &str, service: &str) -> anyhow::Result<Vec<String>> {
        let dump = self.config_dump(node)?;
        let found = dump["resources"]["service"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["key"] == service)
            .map(|s| {
                s["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["workload"].as_str().map(str::to_string))
                    .collect()
            });
        Ok(found.unwrap_or_default())
    }

    fn endpoint_churn(&mut self) -> anyhow::Result<FaultResult> {
        let node = self
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let file = self.manifests().join("10-pods.yaml");
        let original = std::fs::read_to_string(&file)?;
        let without = original
            .split("\n---\n")
            .filter(|doc| !doc.contains("name: backend-3\n"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        anyhow::ensure!(without != original, "no backend-3 in 10-pods.yaml");
        let outcome = self.churn(&node, &file, &without);
        // backend-3 comes back whatever the case found.
        std::fs::write(&file, &original)?;
        super::wait_for("backend-3 back", Duration::from_secs(20), || {
            Ok(self
                .endpoints_of(&node, "shop/api")?
                .iter()
                .any(|w| w == "shop/backend-3")
                .then_some(()))
        })?;
        outcome
    }

    /// Loads the api service while backend-3 is removed from `file`.
    fn churn(
        &mut self,
        node: &str,
        file: &std::path::Path,
        without: &str,
    ) -> anyhow::Result<FaultResult> {
        let mut failures = 0;
        let mut misrouted = 0;
        let mut known_gone = 0;
        let mut slowest = Duration::ZERO;
        for i in 0..60 {
            if i == 10 {
                std::fs::write(file, without)?;
            }
            // Once node-a's proxy no longer lists backend-3, no connection
            // may reach it.
            let gone = !self
                .endpoints_of(node, "shop/api")?
                .iter()
                .any(|w| w == "shop/backend-3");
            let started = Instant::now();
            match self.curl(CLIENT, SERVICE) {
                Ok(body) if body == "shop/backend-3" && gone => misrouted += 1,
                Ok(_) => {}
                Err(_) => failures += 1,
            }
            slowest = slowest.max(started.elapsed());
            known_gone += usize::from(gone);
        }
        Ok(FaultResult {
            ok: failures == 0 && misrouted == 0 && known_gone > 0,
            saw: format!(
                "60 requests, backend-3 removed at 10: {known_gone} sent after node-a knew, {misrouted} of them to backend-3, {failures} failed"
            ),
            requests: 60,
            failures: failures + misrouted,
            slowest,
            ..FaultResult::default()
        })
    }

    fn in_place_edits(&mut self) -> anyhow::Result<FaultResult> {
        use std::io::Write as _;
        let workloads = |lab: &Lab, node: &str| -> anyhow::Result<usize> {
            Ok(lab.config_dump(node)?["resources"]["workload"]
                .as_array()
                .map_or(0, Vec::len))
        };
        let node = self
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let expected = workloads(self, &node)?;
        let file = self.manifests().join("10-pods.yaml");
        let text = std::fs::read(&file)?;
        let (first, second) = text.split_at(text.len() / 2);
        let mut fewest = usize::MAX;
        for _ in 0..200 {
            // An editor saving in place: truncate, then write in two steps.
            let mut out = std::fs::File::create(&file)?;
            out.write_all(first)?;
            out.flush()?;
            std::thread::sleep(Duration::from_millis(2));
            out.write_all(second)?;
            drop(out);
            fewest = fewest.min(workloads(self, &node)?);
        }
        Ok(FaultResult {
            ok: fewest == expected,
            saw: format!(
                "200 saves of 10-pods.yaml: {node} held {fewest} workloads at the fewest, of {expected}"
            ),
            requests: 200,
            failures: expected.saturating_sub(fewest),
            ..FaultResult::default()
        })
    }

    fn rotation_under_transfer(&mut self) -> anyhow::Result<FaultResult> {
        let node = self
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let not_after = |lab: &Lab| -> anyhow::Result<Vec<u64>> {
            Ok(lab.config_dump(&node)?["certificates"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["not_after_unix"].as_u64())
                .collect())
        };
        let before = not_after(self)?;
        // 60 MiB from db-0 (node-b) to the frontend (node-a) over HBONE,
        // paced over about 6 s; both ends print their SHA-256.
        let server = "import socket,hashlib,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('10.244.2.20',7000))\ns.listen(1)\nprint('listening',flush=True)\nc,_=s.accept()\nh=hashlib.sha256()\nchunk=bytes(range(256))*256\nfor i in range(960):\n    c.sendall(chunk); h.update(chunk); time.sleep(0.006)\nc.close()\nprint('sent',960*len(chunk),h.hexdigest(),flush=True)\n";
        let client = "import socket,hashlib\nc=socket.create_connection(('10.244.2.20',7000),timeout=20)\nh=hashlib.sha256()\nn=0\nwhile True:\n    d=c.recv(65536)\n    if not d: break\n    h.update(d); n+=len(d)\nprint('received',n,h.hexdigest(),flush=True)\n";
        let mut sender = self.spawn_in("shop/db-0", "python3", &["-c", server])?;
        super::wait_for("the transfer server", Duration::from_secs(10), || {
            Ok(sender.log().contains("listening").then_some(()))
        })?;
        let started = Instant::now();
        let mut receiver = self.spawn_in(CLIENT, "python3", &["-c", client])?;
        super::wait_for("the transfer", Duration::from_secs(60), || {
            Ok((!receiver.is_running()).then_some(()))
        })?;
        let took = started.elapsed();
        let line = |log: String, word: &str| {
            log.lines()
                .find(|l| l.starts_with(word))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        let sent = line(sender.log(), "sent");
        let received = line(receiver.log(), "received");
        sender.kill();
        let after = not_after(self)?;
        let rotated = after.iter().zip(&before).any(|(a, b)| a != b);
        Ok(FaultResult {
            ok: !sent.is_empty() && sent == received && rotated,
            saw: format!(
                "sent {sent}; received {received}; certificates {} during the transfer",
                if rotated { "rotated" } else { "DID NOT rotate" }
            ),
            requests: 1,
            failures: usize::from(sent != received),
            slowest: took,
            ..FaultResult::default()
        })
    }

    fn floods(&mut self) -> anyhow::Result<FaultResult> {
        let node = self
            .nodes
            .first()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let gateway = self
            .nodes
            .first()
            .map(|n| n.gateway.to_string())
            .unwrap_or_default();
        let pid = self.pid(&node)?;
        let (fds_before, rss_before) = (fds(pid), rss_kib(pid));
        // 1,100 idle connections to the admin port, held for 4 s, from the
        // node's namespace; 2,000 DNS queries for names outside the mesh
        // from a pod.
        let admin_flood = "import socket,time\nss=[]\nfor i in range(1100):\n    try:\n        s=socket.create_connection(('127.0.0.1',15000),timeout=1); ss.append(s)\n    except OSError: pass\nprint('held',len(ss),flush=True)\ntime.sleep(4)\n";
        let dns_flood = format!(
            "import socket,struct,random\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(2000):\n    name=b''.join(bytes([len(p)])+p for p in [b'x%d'%i,b'example',b'invalid'])+b'\\x00'\n    s.sendto(struct.pack('!HHHHHH',i,0x100,1,0,0,0)+name+struct.pack('!HH',1,1),('{gateway}',53))\nprint('sent',flush=True)\n"
        );
        // 1,000 TCP connections to node-a's HBONE port from node-b that
        // never start TLS, held for 10 s: the handshake deadline (2 s in
        // the lab) closes them.
        let hbone = self
            .nodes
            .first()
            .map(|n| n.ip.to_string())
            .unwrap_or_default();
        let hbone_flood = format!(
            "import socket,time\nss=[]\nfor i in range(1000):\n    try:\n        s=socket.create_connection(('{hbone}',15008),timeout=1); ss.append(s)\n    except OSError: pass\nprint('held',len(ss),flush=True)\ntime.sleep(10)\n"
        );
        let flooder = self
            .nodes
            .get(1)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let _admin = self.spawn_in(&node, "python3", &["-c", admin_flood])?;
        let mut hbone_flooder = self.spawn_in(&flooder, "python3", &["-c", &hbone_flood])?;
        let _dns = self.spawn_in(CLIENT, "python3", &["-c", &dns_flood])?;
        std::thread::sleep(Duration::from_millis(1_500));
        let (mut fds_peak, mut rss_peak) = (fds(pid), rss_kib(pid));
        let (failures, slowest, errors) = load(self, 20, |_, _| {
            fds_peak = fds_peak.max(fds(pid));
            rss_peak = rss_peak.max(rss_kib(pid));
            Ok(())
        })?;
        // Once the HBONE handshake deadline has passed for every flooded
        // connection, while the flooder still holds its sockets, what is
        // left is the admin cap (64) and the DNS forwards in flight (256)
        // over what the proxy held. A busy proxy accepts the flood later
        // (its deadlines run from the accept), so this waits for the count
        // to come down, for as long as the flooder holds on: once it lets
        // go, the count would come down without the deadline.
        let fd_bound = fds_before + 64 + 256 + 64;
        let mut fds_settled = fds(pid);
        while fds_settled > fd_bound && hbone_flooder.is_running() {
            std::thread::sleep(Duration::from_millis(100));
            fds_settled = fds(pid);
        }
        let held = hbone_flooder.is_running();
        let ok =
            failures == 0 && held && fds_settled <= fd_bound && rss_peak < rss_before + 64 * 1024;
        Ok(FaultResult {
            ok,
            saw: format!(
                "1,100 idle admin and 1,000 idle HBONE connections, 2,000 DNS queries on {node}: {failures} of 20 requests failed {errors:?}; descriptors {fds_before}, peak {fds_peak}, {fds_settled} after the handshake deadline (bound {fd_bound}){}; RSS {} -> {} MiB",
                if held { "" } else { ", only once the flooder had let go" },
                rss_before / 1024,
                rss_peak / 1024
            ),
            requests: 20,
            failures,
            slowest,
            fds: Some((fds_before, fds_peak)),
            rss_kib: Some((rss_before, rss_peak)),
            ..FaultResult::default()
        })
    }
}

/// The figures of a fault suite as a Markdown table.
pub fn table(results: &[FaultResult]) -> String {
    let mut out = String::from(
        "| case | requests | failed | slowest ms | proxy fds before / peak | proxy RSS MiB before / peak |\n|---|---|---|---|---|---|\n",
    );
    for r in results {
        let fds = r.fds.map_or("-".to_string(), |(a, b)| format!("{a} / {b}"));
        let rss = r.rss_kib.map_or("-".to_string(), |(a, b)| {
            format!("{:.1} / {:.1}", a as f64 / 1024.0, b as f64 / 1024.0)
        });
        out.push_str(&format!(
            "| {} | {} | {} | {} | {fds} | {rss} |\n",
            r.case,
            r.requests,
            r.failures,
            r.slowest.as_millis()
        ));
    }
    out
}
