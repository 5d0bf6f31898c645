//! Observability with the real binaries on loopback: `/metrics` after real
//! traffic (counters, labels, failure reasons, config and certificate
//! gauges), one trace across both proxies through an in-test OTLP
//! receiver, and a dead collector that neither blocks traffic nor grows
//! the proxy's memory. Blocks 127.38 and 127.39.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_tests::net::{socks5_connect, who_answers};
use ferry_tests::otlp::Receiver;
use ferry_tests::prom::{self, Sample};
use ferry_tests::two_nodes::{mtls, Cluster};
use ferry_tests::{http_get, wait_for, MeshOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn scrape(c: &Cluster, node: &str) -> anyhow::Result<Vec<Sample>> {
    let admin = c.mesh.proxy(node)?.admin;
    let (status, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"))?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {text}");
    Ok(prom::parse(&text))
}

/// Sends `payload` through the mesh and reads the echo back.
async fn echo(c: &Cluster, to: &str, port: u16, payload: &[u8]) -> anyhow::Result<()> {
    let mut stream = socks5_connect(c.socks("node-a")?, c.client(), to, port).await?;
    let mut banner = [0u8; 64];
    let mut got = 0;
    while !banner[..got].contains(&b'\n') {
        got += stream.read(&mut banner[got..]).await?;
    }
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut back)).await??;
    anyhow::ensure!(back == payload, "echo mismatch");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_bytes_failures_and_state() -> anyhow::Result<()> {
    let c = Cluster::start(
        38,
        MeshOptions {
            proxy_args: vec!["--istio-metrics".into()],
            ..mtls()
        },
    )
    .await?;
    let n = c.n;
    // Traffic: through the service and to a pod on the other node.
    let payload = vec![7u8; 100_000];
    for _ in 0..3 {
        echo(&c, &format!("10.96.{n}.20"), 80, b"hello").await?;
    }
    echo(&c, &c.ip(2, 11).to_string(), 9090, &payload).await?;

    // Failures: a service without endpoints, then a policy that denies.
    let extra = c.mesh.manifests.path().join("extra.yaml");
    std::fs::write(
        &extra,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: shop}}\nspec:\n  clusterIP: 10.96.{n}.30\n  selector: {{app: nobody}}\n  ports: [{{port: 80}}]\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b2-closed, namespace: shop}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: nobody}}}}}}]\n"
        ),
    )?;
    tokio::task::block_in_place(|| {
        c.mesh.wait_all("service and policy", |d| {
            ferry_tests::resource(d, "service", "shop/empty").is_some()
                && d["resources"]["policy"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
        })
    })?;
    assert!(
        socks5_connect(c.socks("node-a")?, c.client(), &format!("10.96.{n}.30"), 80)
            .await
            .is_err()
    );
    assert!(who_answers(
        c.socks("node-a")?,
        c.client(),
        &c.ip(2, 12).to_string(),
        9090
    )
    .await
    .is_err());

    let a = scrape(&c, "node-a")?;
    let b = scrape(&c, "node-b")?;
    istio_metrics_mirror_ferrys(&a, &b);
    let client = [
        ("source_workload", "client"),
        ("source_namespace", "shop"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        client.iter().chain(extra).copied().collect()
    };
    // The source proxy: every connection, by service and mode.
    let service = "backend.shop.svc.cluster.local".to_string();
    let through_service = prom::sum(
        &a,
        "ferry_connections_opened_total",
        &with(&[("reporter", "source"), ("destination_workload", "backend")]),
    );
    assert!(through_service >= 4.0, "{through_service}");
    let by_service: f64 = a
        .iter()
        .filter(|s| s.name == "ferry_connections_opened_total")
        .filter(|s| s.labels.get("destination_service") == Some(&service))
        .map(|s| s.value)
        .sum();
    assert_eq!(
        by_service, 3.0,
        "three connections went through the service"
    );
    let hbone_closed = prom::sum(
        &a,
        "ferry_connections_closed_total",
        &with(&[("reporter", "source"), ("mode", "hbone")]),
    );
    assert!(hbone_closed >= 1.0, "{hbone_closed}");
    let sent = prom::sum(
        &a,
        "ferry_sent_bytes_total",
        &with(&[("reporter", "source")]),
    );
    let received = prom::sum(
        &a,
        "ferry_received_bytes_total",
        &with(&[("reporter", "source")]),
    );
    assert!(sent >= 100_015.0, "sent {sent}");
    // The echo servers greet with their name, then echo.
    assert!(received >= 100_015.0, "received {received}");
    // The destination proxy saw the cross-node connection with the
    // client's verified identity.
    let seen_by_b = prom::sum(
        &b,
        "ferry_connections_opened_total",
        &with(&[
            ("reporter", "destination"),
            ("mode", "hbone"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/shop/sa/backend",
            ),
        ]),
    );
    assert!(seen_by_b >= 1.0, "{seen_by_b}");
    let b_bytes = prom::sum(
        &b,
        "ferry_sent_bytes_total",
        &with(&[("reporter", "destination")]),
    );
    assert!(b_bytes >= 100_000.0, "{b_bytes}");
    // Failures by reason, on each side.
    let failures = |s: &[Sample], reporter: &'static str, reason: &'static str| {
        prom::sum(
            s,
            "ferry_connection_failures_total",
            &[("reporter", reporter), ("reason", reason)],
        )
    };
    assert_eq!(failures(&a, "source", "no_endpoints"), 1.0);
    // A cross-node denial is one denial: decided (and counted as
    // policy_denied) by the destination; the source counts its failure
    // as denied_by_destination.
    assert_eq!(failures(&a, "source", "denied_by_destination"), 1.0);
    assert_eq!(failures(&a, "source", "policy_denied"), 0.0);
    assert_eq!(failures(&b, "destination", "policy_denied"), 1.0);
    // Nothing is left open; the config and certificate gauges are set.
    assert_eq!(prom::sum(&a, "ferry_open_connections", &[]), 0.0);
    assert!(prom::sum(&a, "ferry_config_revision", &[]) > 0.0);
    assert!(prom::sum(&a, "ferry_config_last_update_timestamp_seconds", &[]) > 1.7e9);
    assert_eq!(
        prom::sum(&a, "ferry_config_resources", &[("kind", "service")]),
        3.0
    );
    let expiry = prom::sum(
        &a,
        "ferry_certificate_expiry_timestamp_seconds",
        &[("identity", "spiffe://cluster.local/ns/shop/sa/client")],
    );
    assert!(expiry > 1.7e9, "{expiry}");
    assert!(prom::sum(&a, "ferry_hbone_pool_connections", &[]) >= 1.0);
    assert!(
        prom::sum(
            &a,
            "ferry_connection_duration_seconds_count",
            &[("mode", "hbone")]
        ) >= 1.0
    );

    // The control plane's own.
    let (status, text) =
        tokio::task::block_in_place(|| http_get(c.mesh.control_plane_metrics, "/metrics"))?;
    assert_eq!(status, 200);
    let cp = prom::parse(&text);
    // Both daemons describe their process and build, under the standard
    // names.
    for (daemon, samples) in [("proxy", &scrape(&c, "node-a")?), ("control plane", &cp)] {
        for name in [
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_threads",
            "process_start_time_seconds",
        ] {
            assert!(prom::sum(samples, name, &[]) > 0.0, "{daemon}: no {name}");
        }
        let build = samples
            .iter()
            .find(|s| s.name == "ferry_build_info")
            .unwrap_or_else(|| panic!("{daemon}: no ferry_build_info"));
        assert_eq!(
            build.labels.get("commit").map(String::as_str),
            Some(ferry_api::build::GIT_COMMIT),
            "{daemon}"
        );
    }
    assert_eq!(
        prom::sum(&cp, "ferry_cp_connected_proxies", &[]),
        2.0,
        "{text}"
    );
    assert!(
        prom::sum(&cp, "ferry_cp_pushes_total", &[]) >= 4.0,
        "{text}"
    );
    assert!(
        prom::sum(&cp, "ferry_cp_push_resources_total", &[]) >= 10.0,
        "{text}"
    );
    assert!(
        prom::sum(&cp, "ferry_cp_push_latency_seconds_count", &[]) >= 2.0,
        "{text}"
    );
    assert!(
        prom::sum(&cp, "ferry_cp_translation_seconds_count", &[]) >= 2.0,
        "{text}"
    );
    assert!(
        prom::sum(&cp, "ferry_cp_csr_total", &[("outcome", "signed")]) >= 3.0,
        "{text}"
    );
    assert!(prom::sum(&cp, "ferry_cp_revision", &[]) >= 2.0, "{text}");
    assert_eq!(prom::sum(&cp, "ferry_cp_nacks_total", &[]), 0.0, "{text}");

    // Every metric the Grafana dashboard queries exists.
    let names: BTreeSet<String> = a.iter().chain(&b).map(|s| s.name.clone()).collect();
    let dashboard = std::fs::read_to_string(
        ferry_tests::repo_root().join("deploy/dashboards/ferry-mesh.json"),
    )?;
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard)?;
    let mut queried = BTreeSet::new();
    collect_exprs(&dashboard, &mut queried);
    assert!(queried.len() >= 5, "{queried:?}");
    for name in &queried {
        assert!(
            names.contains(name),
            "the dashboard queries {name}, which /metrics lacks"
        );
    }
    Ok(())
}

/// `--istio-metrics`: Istio's TCP metrics with Istio's label names and
/// values, and its byte directions (received: client to server; sent:
/// server to client), the same counts as Ferry's own.
fn istio_metrics_mirror_ferrys(a: &[Sample], b: &[Sample]) {
    let client = [
        ("source_workload", "client"),
        ("source_workload_namespace", "shop"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "latest"),
        ("source_app", "client"),
        ("source_version", "unknown"),
        ("source_cluster", "Kubernetes"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        client.iter().chain(extra).copied().collect()
    };
    // The 100 kB echo to backend-b1, reported by its node over mTLS.
    let to_b1 = with(&[
        ("reporter", "destination"),
        ("destination_workload", "backend-b1"),
        ("destination_canonical_service", "backend"),
        ("destination_app", "backend"),
        ("destination_workload_namespace", "shop"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/backend",
        ),
        ("destination_service", "unknown"),
        ("connection_security_policy", "mutual_tls"),
    ]);
    let request = prom::sum(b, "istio_tcp_received_bytes_total", &to_b1);
    let response = prom::sum(b, "istio_tcp_sent_bytes_total", &to_b1);
    assert!(request >= 100_000.0, "request bytes {request}");
    assert!(response >= 100_000.0, "response bytes {response}");
    let ferry = [
        ("reporter", "destination"),
        ("destination_workload", "backend"),
        ("mode", "hbone"),
    ];
    assert_eq!(
        (
            prom::sum(
                b,
                "istio_tcp_received_bytes_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "mutual_tls")
                ]
            ),
            prom::sum(
                b,
                "istio_tcp_sent_bytes_total",
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "mutual_tls")
                ]
            ),
        ),
        (
            prom::sum(b, "ferry_sent_bytes_total", &ferry),
            prom::sum(b, "ferry_received_bytes_total", &ferry),
        ),
        "Istio's received is Ferry's sent (client to server), and the other way"
    );
    // The direct connection and the service's that went to backend-b1
    // (the destination reports no service): all ended.
    let opened = prom::sum(b, "istio_tcp_connections_opened_total", &to_b1);
    assert!(opened >= 1.0, "{opened}");
    assert_eq!(
        prom::sum(b, "istio_tcp_connections_closed_total", &to_b1),
        opened
    );
    // Through the service: its host, name and namespace, at the source.
    let via_service = with(&[
        ("reporter", "source"),
        ("destination_service", "backend.shop.svc.cluster.local"),
        ("destination_service_name", "backend"),
        ("destination_service_namespace", "shop"),
    ]);
    assert_eq!(
        prom::sum(a, "istio_tcp_connections_opened_total", &via_service),
        3.0
    );
    assert_eq!(
        prom::sum(a, "istio_tcp_connections_opened_total", &[]),
        prom::sum(a, "ferry_connections_opened_total", &[]),
        "one Istio count per Ferry count"
    );
}

/// The `ferry_*` metric names in every `expr` of a dashboard.
fn collect_exprs(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == "expr" {
                    if let Some(expr) = v.as_str() {
                        let mut rest = expr;
                        while let Some(at) = rest.find("ferry_") {
                            let name: String = rest[at..]
                                .chars()
                                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                .collect();
                            rest = &rest[at + name.len()..];
                            out.insert(name);
                        }
                    }
                } else {
                    collect_exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_node_connection_is_one_trace_and_a_dead_collector_costs_nothing(
) -> anyhow::Result<()> {
    // The collector as an operator would run it: HTTPS with a private CA,
    // HTTP/protobuf, gzip, an API key header, all set by the standard
    // variables the proxy reads from its environment.
    let pki = ferry_tests::otlp::TestPki::new()?;
    let receiver = Receiver::start_with_options(
        "127.0.0.1:0".parse()?,
        ferry_tests::otlp::ReceiverOptions {
            http: true,
            tls: Some(pki.server.clone()),
            client_ca: None,
        },
    )
    .await?;
    let options = MeshOptions {
        proxy_env: vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("https://{}", receiver.address),
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL".into(), "http/protobuf".into()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE".into(), pki.path("ca.pem")),
            ("OTEL_EXPORTER_OTLP_COMPRESSION".into(), "gzip".into()),
            ("OTEL_EXPORTER_OTLP_HEADERS".into(), "api-key=k1".into()),
            ("FERRY_LOG_FORMAT".into(), "json".into()),
        ],
        ..mtls()
    };
    let c = Cluster::start(39, options).await?;
    echo(&c, &c.ip(2, 11).to_string(), 9090, b"traced").await?;

    // Two spans, one per proxy, in one trace: the destination's is the
    // child of the source's, joined by the traceparent on the CONNECT.
    let spans = wait_for("both spans", Duration::from_secs(20), || {
        let spans = receiver.spans();
        let client = spans.iter().find(|s| s.span.name == "ferry.outbound");
        let server = spans.iter().find(|s| s.span.name == "ferry.inbound");
        Ok(client.zip(server).map(|(c, s)| (c.clone(), s.clone())))
    })?;
    let (client, server) = spans;
    let request = &receiver.requests()[0];
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    assert_eq!(request.header("api-key"), Some("k1"));
    assert_eq!(client.span.trace_id, server.span.trace_id);
    assert_eq!(server.span.parent_span_id, client.span.span_id);
    assert!(
        client.span.parent_span_id.is_empty(),
        "the source span is the root"
    );
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    assert_eq!(client.span.kind(), SpanKind::Client);
    assert_eq!(server.span.kind(), SpanKind::Server);
    for span in [&client, &server] {
        assert_eq!(span.attribute("network.transport").as_deref(), Some("tcp"));
        assert_eq!(
            span.attribute("server.address"),
            Some(c.ip(2, 11).to_string())
        );
        assert_eq!(span.attribute("server.port").as_deref(), Some("9090"));
        assert_eq!(
            span.attribute("ferry.source.principal").as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/client")
        );
        assert_eq!(
            span.attribute("ferry.destination.workload").as_deref(),
            Some("backend")
        );
        assert_eq!(span.attribute("ferry.mode").as_deref(), Some("hbone"));
        assert_eq!(span.attribute("ferry.policy").as_deref(), Some("allow"));
        assert_eq!(
            span.attribute("ferry.outcome").as_deref(),
            Some("completed")
        );
        assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
    }
    assert_eq!(client.attribute("ferry.sent_bytes").as_deref(), Some("6"));
    assert!(client
        .resource
        .contains(&("k8s.node.name".to_string(), "node-a".to_string())));
    assert!(server
        .resource
        .contains(&("service.name".to_string(), "ferry-proxy".to_string())));

    // The access log: one JSON line per finished connection on each side,
    // with the trace id of its span.
    let trace_id: String = client
        .span
        .trace_id
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The connection-duration histogram carries the trace as an
    // OpenMetrics exemplar, on both sides.
    for node in ["node-a", "node-b"] {
        let admin = c.mesh.proxy(node)?.admin;
        let (_, text) = tokio::task::block_in_place(|| http_get(admin, "/metrics"))?;
        let exemplars = prom::exemplars(&text);
        let found = exemplars.iter().find(|(sample, labels, value)| {
            sample.name == "ferry_connection_duration_seconds_bucket"
                && sample.labels.get("mode").map(String::as_str) == Some("hbone")
                && labels.get("trace_id") == Some(&trace_id)
                && *value >= 0.0
        });
        assert!(
            found.is_some(),
            "{node}: no exemplar with trace {trace_id}: {exemplars:?}"
        );
    }
    for node in ["node-a", "node-b"] {
        let log = c.mesh.proxy(node)?.process.log();
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["target"] == "ferry::access" && v["fields"]["trace_id"] == trace_id.as_str()
            })
            .ok_or_else(|| {
                anyhow::anyhow!("{node}: no access log line for trace {trace_id}:\n{log}")
            })?;
        let f = &line["fields"];
        assert_eq!(f["message"], "connection closed", "{line}");
        assert_eq!(
            f["src_principal"], "spiffe://cluster.local/ns/shop/sa/client",
            "{line}"
        );
        assert_eq!(f["dst_workload"], "backend", "{line}");
        assert_eq!(f["mode"], "hbone", "{line}");
        assert_eq!(f["outcome"], "completed", "{line}");
        assert_eq!(f["policy"], "allow", "{line}");
        assert!(f["duration_ms"].is_u64(), "{line}");
        // Both sides count the same bytes: 6 sent, the 11-byte greeting
        // and the 6-byte echo received.
        let reporter = if node == "node-a" {
            "source"
        } else {
            "destination"
        };
        assert_eq!(f["reporter"], reporter, "{line}");
        assert_eq!(f["sent"], 6, "{line}");
        assert_eq!(f["received"], 17, "{line}");
    }

    // The collector dies: traffic goes on, spans are dropped and counted,
    // and memory stays flat.
    drop(receiver);
    let pid = c.mesh.proxy("node-a")?.process.pid().unwrap();
    echo(&c, &c.ip(2, 11).to_string(), 9090, b"warm").await?;
    let before = ferry_tests::rss_kib(pid)?;
    let rounds = 600;
    for i in 0..rounds {
        let to = if i % 2 == 0 { c.ip(2, 11) } else { c.ip(1, 11) };
        echo(&c, &to.to_string(), 9090, b"x").await?;
    }
    let after = ferry_tests::rss_kib(pid)?;
    let dropped = wait_for("dropped spans counted", Duration::from_secs(30), || {
        let a = scrape(&c, "node-a")?;
        let dropped = prom::sum(&a, "ferry_trace_spans_dropped_total", &[]);
        Ok((dropped > 0.0).then_some(dropped))
    })?;
    eprintln!("collector down: {rounds} connections, {dropped} spans dropped, RSS {before} -> {after} KiB");
    // The queue holds at most 4096 spans; 600 connections cannot grow
    // the proxy by more than a few MiB whatever happens to them.
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    Ok(())
}
