//! The handover checks: node-a's proxy is replaced by a new process twice
//! in a row ([`Lab::upgrade`]) while traffic runs through it, and nothing
//! may notice.
//!
//! - a 1 GiB transfer between two pods of node-a (through its proxy's
//!   capture) completes with every byte and the right SHA-256;
//! - a mesh pod of node-a opens a new connection to a Service every 10 ms
//!   (endpoints on both nodes): none fails;
//! - a mesh pod of node-b opens a new connection to a pod of node-a every
//!   10 ms while another connection between them stays open (so the
//!   retiring proxy keeps draining the HBONE connection it sent GOAWAY
//!   on): none fails;
//! - a pod outside the mesh on node-b keeps trying a mesh pod of node-a
//!   that its policy does not admit: every attempt stays refused;
//! - the link between the nodes carries only TLS meanwhile;
//! - the handover time: from the new process's start to the old one's
//!   exit, for the handover with nothing left to drain.
//!
//! Every load loop is bounded in count and time and stops by itself.

use std::time::Duration;

use super::checks::CheckResult;
use super::{wait_for, Lab};

/// The transfer's size.
const TRANSFER_BYTES: u64 = 1 << 30;

/// Sends [`TRANSFER_BYTES`] to the first client, then prints its SHA-256.
const SENDER: &str = "import socket,hashlib,sys
s=socket.socket()
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind((sys.argv[1],7000))
s.listen(1)
print('listening',flush=True)
c,_=s.accept()
h=hashlib.sha256()
chunk=bytes(range(256))*4096
n=0
while n<int(sys.argv[2]):
    c.sendall(chunk); h.update(chunk); n+=len(chunk)
c.close()
print('sent',n,h.hexdigest(),flush=True)
";

/// Receives until the sender closes; prints the byte count and SHA-256.
const RECEIVER: &str = "import socket,hashlib,sys
c=socket.create_connection((sys.argv[1],7000),timeout=30)
h=hashlib.sha256()
n=0
while True:
    d=c.recv(1<<20)
    if not d: break
    h.update(d); n+=len(d)
print('received',n,h.hexdigest(),flush=True)
";

/// A new connection (one HTTP request) every `interval` seconds until the
/// stop file appears or `limit` attempts; prints `attempts failures`.
const TICKER: &str = "import socket,sys,time,os
host,port,path,interval,limit,stop=sys.argv[1],int(sys.argv[2]),sys.argv[3],float(sys.argv[4]),int(sys.argv[5]),sys.argv[6]
attempts=failures=0
errors={}
print('ticking',flush=True)
while attempts<limit and not os.path.exists(stop):
    t=time.monotonic()
    attempts+=1
    try:
        c=socket.create_connection((host,port),timeout=5)
        c.sendall(('GET '+path+' HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n').encode())
        b=b''
        while True:
            d=c.recv(4096)
            if not d: break
            b+=d
        c.close()
        if not b.startswith(b'HTTP/1.') or b' 200 ' not in b.split(b'\\r\\n')[0]:
            raise OSError('answer: %r' % b[:40])
    except OSError as e:
        failures+=1
        errors[str(e)]=errors.get(str(e),0)+1
    time.sleep(max(0,interval-(time.monotonic()-t)))
print('done',attempts,failures,errors,flush=True)
";

/// Opens one keep-alive HTTP connection, asks once, and holds it idle
/// until the stop file (at most 60 s). Prints `holding`, then `released`.
const HOLDER: &str = "import socket,sys,time,os
host,port,stop=sys.argv[1],int(sys.argv[2]),sys.argv[3]
c=socket.create_connection((host,port),timeout=5)
c.sendall(b'GET /held HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')
print('holding' if c.recv(4096).startswith(b'HTTP/1.1 200') else 'refused',flush=True)
t=time.monotonic()
while not os.path.exists(stop) and time.monotonic()-t<60: time.sleep(0.05)
c.close()
print('released',flush=True)
";

/// Tries a connection every `interval` seconds (sending nothing) until the
/// stop file or `limit`; one that stays open a second was admitted.
/// Prints `attempts admitted`.
const KNOCKER: &str = "import socket,sys,time,os
host,port,interval,limit,stop=sys.argv[1],int(sys.argv[2]),float(sys.argv[3]),int(sys.argv[4]),sys.argv[5]
attempts=admitted=0
print('knocking',flush=True)
while attempts<limit and not os.path.exists(stop):
    attempts+=1
    try:
        c=socket.create_connection((host,port),timeout=2)
        c.settimeout(1)
        try:
            if c.recv(1): admitted+=1
        except socket.timeout:
            admitted+=1
        except OSError:
            pass
        c.close()
    except OSError:
        pass
    time.sleep(interval)
print('done',attempts,admitted,flush=True)
";

impl Lab {
    /// The handover checks of the example cluster (see the module).
    pub fn check_handover(&mut self) -> Vec<CheckResult> {
        match self.handover_cases() {
            Ok(results) => results,
            Err(e) => vec![CheckResult {
                what: "node-a's proxy replaced twice under traffic".into(),
                ok: false,
                saw: format!("{e:#}"),
            }],
        }
    }

    fn handover_cases(&mut self) -> anyhow::Result<Vec<CheckResult>> {
        let work = self.work.path().to_path_buf();
        let stop = work.join("handover.stop");
        let _ = std::fs::remove_file(&stop);
        let stop_arg = stop.display().to_string();
        let marker = format!("/ferry-handover-{}", std::process::id());

        // The transfer: shop/frontend sends, shop/backend-1 receives, both
        // on node-a (the frontend admits anyone).
        let bytes = TRANSFER_BYTES.to_string();
        let mut sender = self.spawn_in(
            "shop/frontend",
            "python3",
            &["-c", SENDER, "10.244.1.10", &bytes],
        )?;
        wait_for("the transfer's sender", Duration::from_secs(10), || {
            Ok(sender.log().contains("listening").then_some(()))
        })?;
        let mut receiver = self.spawn_in(
            "shop/backend-1",
            "python3",
            &["-c", RECEIVER, "10.244.1.10"],
        )?;
        // A new connection every 10 ms from node-a to a Service with
        // endpoints on both nodes; at most 60 s.
        let mut ticker = self.spawn_in(
            "shop/frontend",
            "python3",
            &[
                "-c",
                TICKER,
                "10.96.0.21",
                "80",
                &marker,
                "0.01",
                "6000",
                &stop_arg,
            ],
        )?;
        // And into node-a: a new connection every 10 ms from a pod on
        // node-b to node-a's frontend by pod IP (no other endpoint to
        // retry on), over node-b's pooled HBONE connection. A connection
        // held open on it meanwhile keeps the retiring proxy draining it
        // after its GOAWAY: new streams must go to its successor.
        let mut holder = self.spawn_in(
            "shop/backend-2",
            "python3",
            &["-c", HOLDER, "10.244.1.10", "8080", &stop_arg],
        )?;
        wait_for("the held connection", Duration::from_secs(10), || {
            Ok(holder.log().contains("holding").then_some(()))
        })?;
        let mut inbound_ticker = self.spawn_in(
            "shop/backend-2",
            "python3",
            &[
                "-c",
                TICKER,
                "10.244.1.10",
                "8080",
                &marker,
                "0.01",
                "6000",
                &stop_arg,
            ],
        )?;
        // Refused by the backend's policy, through node-a's inbound
        // plaintext listener; at most 60 s.
        let mut knocker = self.spawn_in(
            "default/client",
            "python3",
            &[
                "-c",
                KNOCKER,
                "10.244.1.11",
                "9090",
                "0.02",
                "3000",
                &stop_arg,
            ],
        )?;
        wait_for("the load to start", Duration::from_secs(10), || {
            Ok((ticker.log().contains("ticking")
                && inbound_ticker.log().contains("ticking")
                && knocker.log().contains("knocking"))
            .then_some(()))
        })?;

        let capture = self.start_link_capture("node-a", &[&marker[1..]])?;
        let mut served = Vec::new();
        let mut handovers = || -> anyhow::Result<()> {
            std::thread::sleep(Duration::from_millis(300));
            served.push(self.upgrade("node-a")?);
            std::thread::sleep(Duration::from_millis(500));
            served.push(self.upgrade("node-a")?);
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        };
        let handed = handovers();
        std::fs::write(&stop, b"")?;
        wait_for("the load to stop", Duration::from_secs(30), || {
            Ok((!ticker.is_running()
                && !inbound_ticker.is_running()
                && !knocker.is_running()
                && !holder.is_running())
            .then_some(()))
        })?;
        let captured = capture.finish();
        handed?;
        let exits = self.wait_retired(Duration::from_secs(180));
        wait_for("the transfer", Duration::from_secs(180), || {
            Ok((!receiver.is_running()).then_some(()))
        })?;
        let line = |log: String, word: &str| {
            log.lines()
                .find(|l| l.starts_with(word))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        wait_for(
            "the transfer's sender to finish",
            Duration::from_secs(30),
            || Ok((!sender.is_running()).then_some(())),
        )?;
        let sent = line(sender.log(), "sent");
        let received = line(receiver.log(), "received");
        sender.kill();
        let mut results = Vec::new();
        results.push(CheckResult {
            what: "a 1 GiB transfer through node-a while its proxy is replaced twice: shop/frontend -> shop/backend-1".into(),
            ok: !sent.is_empty() && sent == received && sent.starts_with(&TRANSFER_BYTES.to_string()),
            saw: format!("sent {sent}; received {received}"),
        });
        let counts = |log: String| -> Vec<String> {
            line(log, "done")
                .split_whitespace()
                .map(str::to_string)
                .collect()
        };
        let ticked = |what: &str, log: String| {
            let ticks = counts(log.clone());
            let (attempts, failures) = (
                ticks.first().cloned().unwrap_or_default(),
                ticks.get(1).cloned().unwrap_or_default(),
            );
            CheckResult {
                what: what.into(),
                ok: failures == "0" && attempts.parse::<u32>().unwrap_or(0) > 0,
                saw: if ticks.is_empty() {
                    format!("the client printed no summary: {log}")
                } else {
                    format!(
                        "{attempts} connections, {failures} failed {}",
                        ticks.get(2..).map(|e| e.join(" ")).unwrap_or_default()
                    )
                },
            }
        };
        results.push(ticked(
            "a new connection every 10 ms through node-a during the handovers: shop/frontend -> http://10.96.0.21/",
            ticker.log(),
        ));
        results.push(ticked(
            "a new connection every 10 ms from node-b into node-a during the handovers: shop/backend-2 -> http://10.244.1.10:8080/",
            inbound_ticker.log(),
        ));
        let knocks = counts(knocker.log());
        let (tries, admitted) = (
            knocks.first().cloned().unwrap_or_default(),
            knocks.get(1).cloned().unwrap_or_default(),
        );
        results.push(CheckResult {
            what: "a pair denied by policy stays denied during the handovers: default/client -> shop/backend-1:9090".into(),
            ok: admitted == "0" && tries.parse::<u32>().unwrap_or(0) > 0,
            saw: format!("{tries} attempts, {admitted} admitted"),
        });
        let (ok, saw) = match captured {
            Ok(report) => match report.only_tls(15008, &[15008, 15010]) {
                Ok(summary) => (true, summary),
                Err(problem) => (false, problem),
            },
            Err(e) => (false, format!("{e:#}")),
        };
        results.push(CheckResult {
            what: "the link between node-a and node-b carries only TLS during the handovers".into(),
            ok,
            saw,
        });
        let (ok, saw) = match exits {
            Ok(exits) => (
                exits.len() == 2,
                format!(
                    "new process serving after {}; old processes exited {} after their successor started (the first drained the transfer)",
                    served
                        .iter()
                        .map(|d| format!("{} ms", d.as_millis()))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    exits
                        .iter()
                        .map(|d| format!("{} ms", d.as_millis()))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ),
            Err(e) => (false, format!("{e:#}")),
        };
        results.push(CheckResult {
            what: "handover time of node-a's proxy".into(),
            ok,
            saw,
        });
        Ok(results)
    }
}
