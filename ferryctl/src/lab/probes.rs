//! What runs inside the lab's namespaces besides Ferry: the pods' HTTP
//! server and a packet capture of the link between nodes, with what the
//! capture saw.

/// The HTTP server every lab pod runs: answers `<namespace>/<pod>` on each
/// port, and `/client` with the address its client connected from (and
/// logs every client's address).
pub(crate) const SERVER: &str = r#"
import http.server, socketserver, sys, threading
name, ip, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print("client", self.client_address[0], self.path, flush=True)
        body = ((self.client_address[0] if self.path == "/client" else name) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
servers = [S((ip, p), H) for p in ports]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"#;

/// A packet capture on one interface (AF_PACKET, so no tcpdump is needed):
/// per TCP flow direction its payload bytes, whether its SYN was seen, and
/// the first payload bytes; and how many payloads contained a marker. Stops
/// when the stop file appears or after 60 s, then prints one JSON line.
pub(super) const SNIFFER: &str = r#"
import json, os, socket, struct, sys, time
iface, stop, markers = sys.argv[1], sys.argv[2], [m.encode() for m in sys.argv[3:]]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.bind((iface, 0))
# Until bind, the socket took frames of every interface: drop them.
s.setblocking(False)
while True:
    try:
        s.recv(262144)
    except BlockingIOError:
        break
s.settimeout(0.1)
print("ready", flush=True)
flows, hits, packets, deadline = {}, 0, 0, time.time() + 60
while time.time() < deadline and not os.path.exists(stop):
    try:
        frame = s.recv(262144)
    except socket.timeout:
        continue
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl, total = (ip[0] & 15) * 4, struct.unpack("!H", ip[2:4])[0]
    if ip[9] != 6:
        continue
    tcp = ip[ihl:total] if total else ip[ihl:]
    sport, dport = struct.unpack("!HH", tcp[:4])
    flags, payload = tcp[13], tcp[(tcp[12] >> 4) * 4:]
    packets += 1
    key = "%s:%d>%s:%d" % (socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport)
    f = flows.setdefault(key, {"flow": key, "syn": False, "bytes": 0, "first": ""})
    f["syn"] = f["syn"] or bool(flags & 2)
    if payload:
        if not f["first"]:
            f["first"] = payload[:3].hex()
        f["bytes"] += len(payload)
        hits += sum(1 for m in markers if m in payload)
print(json.dumps({"packets": packets, "marker_hits": hits, "flows": list(flows.values())}), flush=True)
"#;

/// One direction of a TCP flow seen on a link.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LinkFlow {
    /// `src:port>dst:port`
    pub flow: String,
    pub syn: bool,
    pub bytes: u64,
    /// The first three payload bytes, hex.
    pub first: String,
}

/// What a capture on a link saw.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LinkReport {
    pub packets: u64,
    pub marker_hits: u64,
    pub flows: Vec<LinkFlow>,
}

impl LinkReport {
    /// Checks that every TCP payload on the link belonged to TLS on the
    /// given ports (every flow opened during the capture starts with a TLS
    /// handshake record), that no marker was seen in the clear, and that at
    /// least one new connection to `tunnel_port` was opened; returns a
    /// summary of what was seen.
    pub fn only_tls(&self, tunnel_port: u16, tls_ports: &[u16]) -> Result<String, String> {
        self.tls(tunnel_port, tls_ports, true)
    }

    /// [`LinkReport::only_tls`] for traffic that may ride a connection
    /// opened before the capture (the proxies pool their HBONE
    /// connections): bytes on `tunnel_port` are enough.
    pub fn only_tls_pooled(&self, tunnel_port: u16, tls_ports: &[u16]) -> Result<String, String> {
        self.tls(tunnel_port, tls_ports, false)
    }

    fn tls(&self, tunnel_port: u16, tls_ports: &[u16], new: bool) -> Result<String, String> {
        let port_of = |end: &str| end.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        let mut tunnels = 0;
        let mut tunnel_bytes = 0;
        for f in self.flows.iter().filter(|f| f.bytes > 0) {
            let (from, to) = f.flow.split_once('>').unwrap_or((&f.flow, ""));
            let ports = [port_of(from), port_of(to)];
            if !ports.iter().flatten().any(|p| tls_ports.contains(p)) {
                return Err(format!(
                    "{} carried {} bytes outside TLS ports",
                    f.flow, f.bytes
                ));
            }
            // A TLS handshake record: type 22, version 3.x.
            if f.syn && !f.first.starts_with("1603") {
                return Err(format!(
                    "{} did not start with a TLS record (first bytes {})",
                    f.flow, f.first
                ));
            }
            if ports.contains(&Some(tunnel_port)) {
                tunnel_bytes += f.bytes;
                if f.syn && port_of(to) == Some(tunnel_port) {
                    tunnels += 1;
                }
            }
        }
        if self.marker_hits > 0 {
            return Err(format!(
                "{} packets carried the payload in the clear",
                self.marker_hits
            ));
        }
        if new && tunnels == 0 {
            return Err(format!(
                "no new connection to port {tunnel_port} was seen ({} packets)",
                self.packets
            ));
        }
        if tunnel_bytes == 0 {
            return Err(format!(
                "nothing crossed on port {tunnel_port} ({} packets)",
                self.packets
            ));
        }
        Ok(format!(
            "{} packets, {tunnels} new TLS connection(s) to :{tunnel_port} ({tunnel_bytes} bytes), no plaintext payload",
            self.packets
        ))
    }
}
