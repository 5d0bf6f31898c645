//! DNS for services: the proxy answers for `<service>.<namespace>.svc.<domain>`
//! (the name a pod's search path produces for `service`, `service.namespace`
//! and the full name) and forwards every other name to the upstream resolver.
//!
//! - a service with cluster IPs: its cluster IPs (A / AAAA by family);
//! - a headless service: the addresses of its ready endpoints (the pods);
//! - an ExternalName service: a CNAME to its external name, followed as a
//!   recursive server would: a target that is itself a service name is
//!   answered from the mesh in the same response, any other target is
//!   asked of the upstream resolver and its records appended (stub
//!   resolvers such as glibc's do not chase a CNAME themselves).
//!
//! Names under `svc.<domain>` that match nothing get NXDOMAIN from us, with
//! authority; nothing about them leaves the node.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::state::{ConfigStore, ProxyState};

/// TTL of the answers (short: endpoints move).
const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest CNAME chain followed (ExternalName to ExternalName...).
const MAX_CHAIN: usize = 8;

/// What the mesh knows about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Addresses(Vec<IpAddr>),
    Alias(String),
    /// Under `svc.<domain>` but no such service.
    NotFound,
    /// Not a service name: for the upstream resolver.
    NotOurs,
}

/// Resolves a fully qualified name (without the trailing dot, any case).
pub fn resolve(state: &ProxyState, name: &str, domain: &str) -> Answer {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = name.strip_suffix(&format!(".svc.{domain}")) else {
        return Answer::NotOurs;
    };
    let Some((service, namespace)) = rest.rsplit_once('.') else {
        return Answer::NotFound;
    };
    // `<service>.<namespace>`: a pod hostname would add one more label; not served.
    if service.contains('.') {
        return Answer::NotFound;
    }
    let Some(svc) = state.service(&format!("{namespace}/{service}")) else {
        return Answer::NotFound;
    };
    if let Some(external) = &svc.external_name {
        return Answer::Alias(external.clone());
    }
    if !svc.cluster_ips.is_empty() {
        return Answer::Addresses(svc.cluster_ips.clone());
    }
    let mut ready: Vec<IpAddr> = svc
        .endpoints
        .iter()
        .filter(|e| e.ready)
        .map(|e| e.address)
        .collect();
    ready.sort();
    ready.dedup();
    Answer::Addresses(ready)
}

/// Builds the response to `query` from the mesh's answer, or `None` when the
/// name is not ours.
pub fn answer(state: &ProxyState, query: &Message, domain: &str) -> Option<Message> {
    answer_chain(state, query, domain).map(|(response, _)| response)
}

/// Like [`answer`], and the end of a CNAME chain that leaves the mesh (an
/// ExternalName's external target), for the caller to resolve upstream.
fn answer_chain(
    state: &ProxyState,
    query: &Message,
    domain: &str,
) -> Option<(Message, Option<Name>)> {
    let question = query.queries.first()?;
    let mut owner = question.name().clone();
    let mut found = resolve(state, &owner.to_ascii(), domain);
    if found == Answer::NotOurs {
        return None;
    }
    let mut response = Message::response(query.metadata.id, OpCode::Query);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    let mut external = None;
    for hop in 0..=MAX_CHAIN {
        match found {
            Answer::NotFound | Answer::NotOurs => {
                response.metadata.response_code = ResponseCode::NXDomain;
                break;
            }
            Answer::Alias(_) if hop == MAX_CHAIN => {
                response.metadata.response_code = ResponseCode::ServFail;
                break;
            }
            Answer::Alias(target) => {
                let Ok(target) = Name::from_ascii(format!("{}.", target.trim_end_matches('.')))
                else {
                    response.metadata.response_code = ResponseCode::ServFail;
                    break;
                };
                response.add_answer(Record::from_rdata(
                    owner,
                    TTL,
                    RData::CNAME(CNAME(target.clone())),
                ));
                found = resolve(state, &target.to_ascii(), domain);
                owner = target;
                if found == Answer::NotOurs {
                    // Outside the mesh: the caller asks upstream.
                    external = Some(owner);
                    break;
                }
            }
            Answer::Addresses(addresses) => {
                for ip in addresses {
                    let rdata = match (ip, question.query_type()) {
                        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
                        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                            RData::AAAA(AAAA(v6))
                        }
                        _ => continue,
                    };
                    response.add_answer(Record::from_rdata(owner.clone(), TTL, rdata));
                }
                break;
            }
        }
    }
    Some((response, external))
}

/// The DNS server of a node proxy.
#[derive(Debug, Clone)]
pub struct DnsServer {
    pub store: Arc<ConfigStore>,
    pub domain: String,
    /// Where other names go; `None`: SERVFAIL for them.
    pub upstream: Option<SocketAddr>,
}

impl DnsServer {
    /// Serves until the task is dropped.
    pub async fn serve(self, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let this = Arc::new(self);
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS receive failed");
                    continue;
                }
            };
            let packet = buf[..len].to_vec();
            let socket = socket.clone();
            let this = this.clone();
            tokio::spawn(async move {
                if let Some(reply) = this.handle(&packet).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
            });
        }
    }

    async fn handle(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(packet).ok()?;
        let ours = answer_chain(&self.store.snapshot(), &query, &self.domain);
        if let Some((mut response, external)) = ours {
            if let Some(target) = external {
                self.chase(&query, target, &mut response).await;
            }
            return response.to_vec().ok();
        }
        match self.forward(packet).await {
            Some(reply) => Some(reply),
            None => Message::error_msg(
                query.metadata.id,
                query.metadata.op_code,
                ResponseCode::ServFail,
            )
            .to_vec()
            .ok(),
        }
    }

    /// Appends the upstream's answer for an ExternalName's target (same
    /// record type); without one the CNAME stands alone.
    async fn chase(&self, query: &Message, target: Name, response: &mut Message) {
        let Some(question) = query.queries.first() else {
            return;
        };
        let mut ask = Message::query();
        ask.metadata.id = query.metadata.id;
        ask.metadata.recursion_desired = true;
        ask.add_query(hickory_proto::op::Query::query(
            target,
            question.query_type(),
        ));
        let Some(reply) = (match ask.to_vec() {
            Ok(packet) => self.forward(&packet).await,
            Err(_) => None,
        }) else {
            return;
        };
        if let Ok(reply) = Message::from_vec(&reply) {
            response.metadata.authoritative = false;
            for record in reply.answers {
                response.add_answer(record);
            }
        }
    }

    async fn forward(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let upstream = self.upstream?;
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().ok()?
        } else {
            "[::]:0".parse().ok()?
        };
        let socket = UdpSocket::bind(bind).await.ok()?;
        socket.send_to(packet, upstream).await.ok()?;
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(len);
        Some(buf)
    }
}

/// The first `nameserver` of a resolv.conf text.
pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|v| v.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::model::{Endpoint, Service, ServiceType, TrafficPolicy};
    use ferry_api::ResourceBody;
    use hickory_proto::op::Query;

    fn service(
        name: &str,
        cluster_ips: &[&str],
        external: Option<&str>,
        endpoints: &[(&str, bool)],
    ) -> ResourceBody {
        ResourceBody::Service(Service {
            namespace: "shop".into(),
            name: name.into(),
            hostname: format!("{name}.shop.svc.cluster.local"),
            service_type: if external.is_some() {
                ServiceType::ExternalName
            } else {
                ServiceType::ClusterIP
            },
            cluster_ips: cluster_ips.iter().map(|i| i.parse().unwrap()).collect(),
            headless: cluster_ips.is_empty() && external.is_none(),
            ports: vec![],
            load_balancer_ips: vec![],
            external_ips: vec![],
            external_name: external.map(str::to_string),
            client_ip_affinity: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
            endpoints: endpoints
                .iter()
                .map(|(ip, ready)| Endpoint {
                    workload: None,
                    address: ip.parse().unwrap(),
                    node: None,
                    ports: vec![],
                    ready: *ready,
                    serving: *ready,
                    terminating: false,
                    hostname: None,
                })
                .collect(),
            selector: true,
        })
    }

    fn store() -> Arc<ConfigStore> {
        let bodies = [
            service("web", &["10.96.0.10", "fd00::10"], None, &[]),
            service(
                "db",
                &[],
                None,
                &[("10.0.0.5", true), ("10.0.0.6", false), ("10.0.0.4", true)],
            ),
            service("search", &[], Some("search.example.com"), &[]),
            service("www", &[], Some("web.shop.svc.cluster.local"), &[]),
            service("loop-a", &[], Some("loop-b.shop.svc.cluster.local"), &[]),
            service("loop-b", &[], Some("loop-a.shop.svc.cluster.local"), &[]),
        ];
        ConfigStore::holding(&bodies)
    }

    fn state() -> Arc<ProxyState> {
        store().snapshot()
    }

    #[test]
    fn service_names_resolve_like_cluster_dns() {
        let s = state();
        let d = "cluster.local";
        assert_eq!(
            resolve(&s, "web.shop.svc.cluster.local.", d),
            Answer::Addresses(vec![
                "10.96.0.10".parse().unwrap(),
                "fd00::10".parse().unwrap()
            ])
        );
        assert_eq!(
            resolve(&s, "WEB.Shop.svc.cluster.local", d),
            resolve(&s, "web.shop.svc.cluster.local", d)
        );
        assert_eq!(
            resolve(&s, "db.shop.svc.cluster.local", d),
            Answer::Addresses(vec![
                "10.0.0.4".parse().unwrap(),
                "10.0.0.5".parse().unwrap()
            ]),
            "headless: ready pods only"
        );
        assert_eq!(
            resolve(&s, "search.shop.svc.cluster.local", d),
            Answer::Alias("search.example.com".into())
        );
        assert_eq!(
            resolve(&s, "nope.shop.svc.cluster.local", d),
            Answer::NotFound
        );
        assert_eq!(
            resolve(&s, "web.other.svc.cluster.local", d),
            Answer::NotFound
        );
        assert_eq!(resolve(&s, "example.com", d), Answer::NotOurs);
        assert_eq!(resolve(&s, "web.shop.svc.other.domain", d), Answer::NotOurs);
    }

    fn query(name: &str, kind: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m
    }

    #[tokio::test]
    async fn the_server_answers_ours_and_forwards_the_rest() {
        // A fake upstream that answers everything with 192.0.2.1.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            for _ in 0..16 {
                let Ok((len, peer)) = upstream.recv_from(&mut buf).await else {
                    break;
                };
                let q = Message::from_vec(&buf[..len]).unwrap();
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                let question = q.queries[0].clone();
                r.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A("192.0.2.1".parse().unwrap())),
                ));
                r.add_query(question);
                let _ = upstream.send_to(&r.to_vec().unwrap(), peer).await;
            }
        });
        let store = store();
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = socket.local_addr().unwrap();
        let server = DnsServer {
            store,
            domain: "cluster.local".into(),
            upstream: Some(upstream_addr),
        };
        let task = tokio::spawn(server.serve(socket));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |m: Message| {
            let client = &client;
            async move {
                client
                    .send_to(&m.to_vec().unwrap(), server_addr)
                    .await
                    .unwrap();
                let mut buf = vec![0u8; 4096];
                let (len, _) =
                    tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                        .await
                        .unwrap()
                        .unwrap();
                Message::from_vec(&buf[..len]).unwrap()
            }
        };
        let a = ask(query("web.shop.svc.cluster.local.", RecordType::A)).await;
        assert!(a.metadata.authoritative);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(
            a.answers[0].data,
            RData::A(A("10.96.0.10".parse().unwrap()))
        );
        let aaaa = ask(query("web.shop.svc.cluster.local.", RecordType::AAAA)).await;
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(AAAA("fd00::10".parse().unwrap()))
        );
        // An ExternalName: the CNAME, then the upstream's answer for its target.
        let cname = ask(query("search.shop.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(
            cname.answers[0].data,
            RData::CNAME(CNAME(Name::from_ascii("search.example.com.").unwrap()))
        );
        assert_eq!(cname.answers[1].name.to_ascii(), "search.example.com.");
        assert_eq!(
            cname.answers[1].data,
            RData::A(A("192.0.2.1".parse().unwrap()))
        );
        // An ExternalName naming a service: answered from the mesh.
        let alias = ask(query("www.shop.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(alias.answers.len(), 2, "{alias:?}");
        assert_eq!(
            alias.answers[1].name.to_ascii(),
            "web.shop.svc.cluster.local."
        );
        assert_eq!(
            alias.answers[1].data,
            RData::A(A("10.96.0.10".parse().unwrap()))
        );
        // A loop ends in SERVFAIL after a bounded chain.
        let looped = ask(query("loop-a.shop.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(looped.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(looped.answers.len(), MAX_CHAIN);
        let missing = ask(query("nope.shop.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        let forwarded = ask(query("example.com.", RecordType::A)).await;
        assert_eq!(
            forwarded.answers[0].data,
            RData::A(A("192.0.2.1".parse().unwrap()))
        );
        task.abort();
    }

    #[test]
    fn upstream_comes_from_resolv_conf() {
        assert_eq!(
            upstream_from_resolv_conf(
                "# x\nsearch a b\nnameserver 10.0.0.53\nnameserver 1.1.1.1\n"
            ),
            Some("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(upstream_from_resolv_conf("search x\n"), None);
    }
}
