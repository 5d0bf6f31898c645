//! DNS for services: the proxy answers for `<service>.<namespace>.svc.<domain>`
//! (the name a pod's search path produces for `service`, `service.namespace`
//! and the full name) and forwards every other name to the upstream
//! resolvers, over UDP and TCP.
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
//! authority; nothing about them leaves the node. What a name means is the
//! core's rule ([`ferry_core::route::names`]); the server is hickory-server
//! and the forwarder hickory-resolver (one pooled client per upstream, with
//! its own timeouts and cache, instead of a socket per query).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_core::route::{resolve_fqdn as resolve, NameAnswer as Answer};
use ferry_core::state::{ConfigStore, ProxyState};
use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::{Resolver, TokioResolver};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use serde::Serialize;
use tokio::net::{TcpListener, UdpSocket};

/// The DNS server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsSettings {
    pub cluster_domain: String,
    /// Where names outside the mesh go; `None`: the system's resolvers.
    pub upstream: Option<SocketAddr>,
    /// Longest a forwarded query waits for the upstream.
    pub upstream_timeout: Duration,
    /// TTL of the answers for services (short: endpoints move).
    pub ttl: u32,
    /// Idle time after which a DNS-over-TCP client is disconnected.
    pub tcp_idle_timeout: Duration,
    /// Forwarded queries in flight at most.
    pub max_forwards: usize,
}

/// Longest CNAME chain followed (ExternalName to ExternalName...).
const MAX_CHAIN: usize = 8;
/// Responses queued per DNS-over-TCP connection.
const TCP_RESPONSE_QUEUE: usize = 32;

/// The records the mesh answers for one question: the CNAME chain and the
/// addresses at its end, the response code, and the end of a chain that
/// leaves the mesh (an ExternalName's external target), to be asked
/// upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshAnswer {
    pub records: Vec<Record>,
    pub code: ResponseCode,
    pub external: Option<Name>,
}

/// The mesh's answer to `question`, or `None` when the name is not ours.
pub fn answer(state: &ProxyState, question: &Query, domain: &str, ttl: u32) -> Option<MeshAnswer> {
    let mut owner = question.name().clone();
    let mut found = resolve(state, &owner.to_ascii(), domain);
    if found == Answer::NotOurs {
        return None;
    }
    let mut answer = MeshAnswer {
        records: Vec::new(),
        code: ResponseCode::NoError,
        external: None,
    };
    for hop in 0..=MAX_CHAIN {
        match found {
            Answer::NotFound | Answer::NotOurs => {
                answer.code = ResponseCode::NXDomain;
                break;
            }
            Answer::Alias(_) if hop == MAX_CHAIN => {
                answer.code = ResponseCode::ServFail;
                break;
            }
            Answer::Alias(target) => {
                let Ok(target) = Name::from_ascii(format!("{}.", target.trim_end_matches('.')))
                else {
                    answer.code = ResponseCode::ServFail;
                    break;
                };
                answer.records.push(Record::from_rdata(
                    owner,
                    ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                found = resolve(state, &target.to_ascii(), domain);
                owner = target;
                if found == Answer::NotOurs {
                    // Outside the mesh: asked upstream.
                    answer.external = Some(owner);
                    break;
                }
            }
            Answer::Addresses(addresses) => {
                for ip in addresses {
                    let rdata = match (ip, question.query_type()) {
                        (std::net::IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                            RData::A(A(v4))
                        }
                        (std::net::IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                            RData::AAAA(AAAA(v6))
                        }
                        _ => continue,
                    };
                    answer
                        .records
                        .push(Record::from_rdata(owner.clone(), ttl, rdata));
                }
                break;
            }
        }
    }
    Some(answer)
}

/// The forwarder: to `upstream` when given, else to the nameservers of
/// /etc/resolv.conf. Never reads /etc/hosts (the node's, not the pod's).
/// The resolver for names outside the mesh, shared by the DNS server's
/// forwarder and the proxy's own name resolution (SOCKS5 by name,
/// ExternalName targets): `--dns-upstream`, else the nameservers of
/// /etc/resolv.conf; never /etc/hosts (the node's, not the pods'). `None`
/// (logged once) when neither is usable: names outside the mesh then fail.
pub fn upstream_resolver(settings: &DnsSettings) -> Option<TokioResolver> {
    match forwarder(settings) {
        Ok(resolver) => Some(resolver),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS upstream (--dns-upstream, /etc/resolv.conf): names outside the mesh do not resolve");
            None
        }
    }
}

fn forwarder(settings: &DnsSettings) -> Result<TokioResolver, NetError> {
    let mut builder = match settings.upstream {
        Some(upstream) => {
            let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()].map(|mut c| {
                c.port = upstream.port();
                c
            });
            let server = NameServerConfig::new(upstream.ip(), true, Vec::from(connections));
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![server]),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio()?,
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = settings.upstream_timeout;
    options.attempts = 1;
    builder.build()
}

/// Answers DNS requests for one node proxy.
#[derive(Debug)]
struct Handler {
    store: Arc<ConfigStore>,
    domain: String,
    ttl: u32,
    /// `None`: no upstream could be configured; other names get SERVFAIL.
    upstream: Option<TokioResolver>,
    /// Forwarded queries in flight at most (each holds a socket until the
    /// upstream answers or times out); beyond, SERVFAIL at once.
    forwards: tokio::sync::Semaphore,
}

/// What goes in a response besides the question.
#[derive(Debug, Default)]
struct Sections {
    answers: Vec<Record>,
    authorities: Vec<Record>,
}

impl Handler {
    /// Asks the upstream resolvers; the response code and records to send.
    async fn forward(&self, question: &Query, sections: &mut Sections) -> ResponseCode {
        let Some(upstream) = &self.upstream else {
            return ResponseCode::ServFail;
        };
        let Ok(_in_flight) = self.forwards.try_acquire() else {
            tracing::debug!(name = %question.name(), "DNS forward refused: too many in flight");
            return ResponseCode::ServFail;
        };
        match upstream
            .lookup(question.name().clone(), question.query_type())
            .await
        {
            Ok(lookup) => {
                sections.answers.extend_from_slice(lookup.answers());
                sections.authorities.extend_from_slice(lookup.authorities());
                ResponseCode::NoError
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                if let Some(soa) = none.soa {
                    sections.authorities.push((*soa).into_record_of_rdata());
                }
                none.response_code
            }
            Err(NetError::Dns(DnsError::ResponseCode(code))) => code,
            Err(e) => {
                tracing::debug!(name = %question.name(), error = %e, "DNS upstream failed");
                ResponseCode::ServFail
            }
        }
    }

    /// The response code, authority and records for `question`.
    async fn respond(&self, question: &Query, metadata: &mut Metadata, sections: &mut Sections) {
        let ours = answer(&self.store.snapshot(), question, &self.domain, self.ttl);
        let Some(ours) = ours else {
            metadata.response_code = self.forward(question, sections).await;
            return;
        };
        metadata.authoritative = true;
        metadata.response_code = ours.code;
        sections.answers = ours.records;
        if let Some(target) = ours.external {
            // The CNAME leaves the mesh: append what upstream says of its
            // target (same type); without an answer the CNAME stands alone.
            let mut upstream = Sections::default();
            let asked = Query::query(target, question.query_type());
            if self.forward(&asked, &mut upstream).await == ResponseCode::NoError {
                metadata.authoritative = false;
                sections.answers.extend(upstream.answers);
            }
        }
    }
}

#[async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let mut sections = Sections::default();
        let question = request
            .request_info()
            .ok()
            .map(|info| info.query.original().clone());
        match question {
            None => metadata.response_code = ResponseCode::FormErr,
            Some(_) if request.metadata.op_code != OpCode::Query => {
                metadata.response_code = ResponseCode::NotImp
            }
            Some(question) => self.respond(&question, &mut metadata, &mut sections).await,
        }
        // EDNS only when the client spoke it (RFC 6891).
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().max(512));
            ours
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let message = builder.build(
            metadata,
            sections.answers.iter(),
            sections.authorities.iter(),
            [],
            [],
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS response not sent");
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The DNS server of a node proxy.
#[derive(Debug)]
pub struct DnsServer {
    handler: Handler,
    tcp_idle_timeout: std::time::Duration,
}

impl DnsServer {
    /// A server answering from `store`. Without a usable upstream (no
    /// `--dns-upstream` and no readable resolv.conf) names outside the mesh
    /// get SERVFAIL; this is logged once.
    /// A server answering from `store`, forwarding other names to
    /// `upstream` ([`upstream_resolver`]; `None`: SERVFAIL for them).
    pub fn new(
        store: Arc<ConfigStore>,
        settings: &DnsSettings,
        upstream: Option<TokioResolver>,
    ) -> Self {
        Self {
            handler: Handler {
                store,
                domain: settings.cluster_domain.clone(),
                ttl: settings.ttl,
                upstream,
                forwards: tokio::sync::Semaphore::new(settings.max_forwards),
            },
            tcp_idle_timeout: settings.tcp_idle_timeout,
        }
    }

    /// Serves UDP and TCP until the task is dropped.
    pub async fn serve(self, udp: UdpSocket, tcp: TcpListener) {
        let mut server = Server::new(self.handler);
        server.register_socket(udp);
        server.register_listener(tcp, self.tcp_idle_timeout, TCP_RESPONSE_QUEUE);
        if let Err(e) = server.block_until_done().await {
            tracing::warn!(error = %e, "DNS server stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use ferry_api::model::{Endpoint, Service, ServiceType, TrafficPolicy};
    use ferry_api::ResourceBody;
    use hickory_proto::op::Message;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn service(
        name: &str,
        cluster_ips: &[&str],
        external: Option<&str>,
        endpoints: &[(&str, bool)],
    ) -> ResourceBody {
        ResourceBody::Service(Box::new(Service {
            namespace: "shop".into(),
            name: name.into(),
            hostname: format!("{name}.shop.svc.cluster.local").into(),
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
                    ready: *ready,
                    serving: *ready,
                    terminating: false,
                    placement: Arc::new(ferry_api::model::Placement {
                        node: None,
                        ports: vec![].into(),
                        hostname: None,
                        node_hints: Vec::new().into(),
                        zone: None,
                        zone_hints: Vec::new().into(),
                    }),
                })
                .collect(),
            selector: true,
            traffic_distribution: None,
        }))
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

    impl DnsServer {
        fn with_settings(store: Arc<ConfigStore>, settings: &DnsSettings) -> Self {
            Self::new(store, settings, upstream_resolver(settings))
        }
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
        let tcp = TcpListener::bind(server_addr).await.unwrap();
        let server = DnsServer::with_settings(
            store,
            &DnsSettings {
                cluster_domain: "cluster.local".into(),
                upstream: Some(upstream_addr),
                upstream_timeout: Duration::from_secs(2),
                ttl: 5,
                tcp_idle_timeout: Duration::from_secs(5),
                max_forwards: 16,
            },
        );
        let task = tokio::spawn(server.serve(socket, tcp));
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
        // The same server over TCP (two-byte length prefix).
        let mut tcp = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let packet = query("web.shop.svc.cluster.local.", RecordType::A)
            .to_vec()
            .unwrap();
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&packet);
        tcp.write_all(&framed).await.unwrap();
        let mut len = [0u8; 2];
        tcp.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tcp.read_exact(&mut reply).await.unwrap();
        let over_tcp = Message::from_vec(&reply).unwrap();
        assert_eq!(
            over_tcp.answers[0].data,
            RData::A(A("10.96.0.10".parse().unwrap()))
        );
        task.abort();
    }

    #[tokio::test]
    async fn malformed_and_unsupported_messages_get_rfc_1035_answers() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = socket.local_addr().unwrap();
        let tcp = TcpListener::bind(server_addr).await.unwrap();
        let server = DnsServer::with_settings(
            store(),
            &DnsSettings {
                cluster_domain: "cluster.local".into(),
                upstream: Some("127.0.0.1:9".parse().unwrap()),
                upstream_timeout: Duration::from_millis(200),
                ttl: 5,
                tcp_idle_timeout: Duration::from_secs(5),
                max_forwards: 16,
            },
        );
        let task = tokio::spawn(server.serve(socket, tcp));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ask = |packet: Vec<u8>| {
            let client = &client;
            async move {
                client.send_to(&packet, server_addr).await.unwrap();
                let mut buf = vec![0u8; 4096];
                tokio::time::timeout(Duration::from_millis(500), client.recv_from(&mut buf))
                    .await
                    .ok()
                    .map(|r| buf[..r.unwrap().0].to_vec())
            }
        };
        // A response is not a question: no answer (no reflection loops).
        let mut response = query("web.shop.svc.cluster.local.", RecordType::A);
        response.metadata.message_type = hickory_proto::op::MessageType::Response;
        assert_eq!(ask(response.to_vec().unwrap()).await, None);
        // An opcode other than QUERY: NOTIMP, with the request's ID.
        let mut status = query("web.shop.svc.cluster.local.", RecordType::A);
        status.metadata.op_code = OpCode::Status;
        status.metadata.id = 4242;
        let reply = Message::from_vec(&ask(status.to_vec().unwrap()).await.unwrap()).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(reply.metadata.id, 4242);
        // A header announcing a question that is not there: FORMERR.
        let header_only = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let reply = ask(header_only.to_vec())
            .await
            .expect("an answer to a malformed query");
        assert_eq!(&reply[..2], &[0x12, 0x34]);
        assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
        assert_eq!(reply[2] & 0x80, 0x80, "a response");
        // No question at all: FORMERR.
        let mut empty = Message::query();
        empty.metadata.id = 7;
        let reply = Message::from_vec(&ask(empty.to_vec().unwrap()).await.unwrap()).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        // Fewer bytes than a header: nothing to answer to.
        assert_eq!(ask(vec![1, 2, 3]).await, None);
        task.abort();
    }

    #[tokio::test]
    async fn forwards_in_flight_are_bounded() {
        // An upstream that reads queries and never answers.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while upstream.recv_from(&mut buf).await.is_ok() {}
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = socket.local_addr().unwrap();
        let tcp = TcpListener::bind(server_addr).await.unwrap();
        let server = DnsServer::with_settings(
            store(),
            &DnsSettings {
                cluster_domain: "cluster.local".into(),
                upstream: Some(upstream_addr),
                upstream_timeout: Duration::from_secs(3),
                ttl: 5,
                tcp_idle_timeout: Duration::from_secs(5),
                max_forwards: 1,
            },
        );
        let task = tokio::spawn(server.serve(socket, tcp));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // The first forward holds the only slot until the upstream times out...
        let mut first = query("example.com.", RecordType::A);
        first.metadata.id = 1;
        client
            .send_to(&first.to_vec().unwrap(), server_addr)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ...so a second gets SERVFAIL at once, not a socket of its own.
        let mut second = query("example.org.", RecordType::A);
        second.metadata.id = 2;
        client
            .send_to(&second.to_vec().unwrap(), server_addr)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf))
            .await
            .expect("an immediate answer to the second query")
            .unwrap();
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.metadata.id, 2);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        // Names of the mesh are still answered.
        let mut ours = query("web.shop.svc.cluster.local.", RecordType::A);
        ours.metadata.id = 3;
        client
            .send_to(&ours.to_vec().unwrap(), server_addr)
            .await
            .unwrap();
        let (len, _) = tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let reply = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(reply.metadata.id, 3);
        assert_eq!(reply.answers.len(), 1);
        task.abort();
        silent.abort();
    }

    #[tokio::test]
    async fn a_forwarded_reply_counts_only_from_the_upstream() {
        // The upstream answers 192.0.2.1 after 200 ms; meanwhile a forger
        // on another port of the same host answers first, with the right
        // ID, 192.0.2.66. Only the upstream's answer may be taken.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let forger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let fake = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let Ok((len, asker)) = upstream.recv_from(&mut buf).await else {
                return;
            };
            let q = Message::from_vec(&buf[..len]).unwrap();
            let answer = |ip: &str| {
                let mut r = Message::response(q.metadata.id, OpCode::Query);
                r.metadata.recursion_available = true;
                let question = q.queries[0].clone();
                r.add_answer(Record::from_rdata(
                    question.name().clone(),
                    60,
                    RData::A(A(ip.parse().unwrap())),
                ));
                r.add_query(question);
                r.to_vec().unwrap()
            };
            let _ = forger.send_to(&answer("192.0.2.66"), asker).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = upstream.send_to(&answer("192.0.2.1"), asker).await;
        });
        let settings = DnsSettings {
            cluster_domain: "cluster.local".into(),
            upstream: Some(upstream_addr),
            upstream_timeout: Duration::from_secs(2),
            ttl: 5,
            tcp_idle_timeout: Duration::from_secs(5),
            max_forwards: 4,
        };
        let resolver = upstream_resolver(&settings).unwrap();
        let found = resolver
            .lookup(Name::from_ascii("example.com.").unwrap(), RecordType::A)
            .await
            .unwrap();
        let answers: Vec<_> = found.answers().iter().map(|r| r.data.clone()).collect();
        assert_eq!(answers, [RData::A(A("192.0.2.1".parse().unwrap()))]);
        fake.abort();
    }
}
