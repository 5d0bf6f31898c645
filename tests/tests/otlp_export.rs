//! The proxy's OTLP exporter against the in-test receiver, one case per
//! setting: gRPC and HTTP/protobuf, plain and TLS (a test CA given as
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`, client certificates for a collector
//! that wants them), gzip, headers. A TLS collector whose CA is not
//! trusted receives nothing (the span is counted as dropped). The settings
//! come from a map of the standard variables, read by the code that reads
//! the proxy's environment.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use ferry_proxy::telemetry::otlp::OtlpSettings;
use ferry_proxy::telemetry::trace::Tracing;
use ferry_tests::otlp::{Receiver, ReceiverOptions, TestPki as Pki};
use opentelemetry::trace::{Span as _, SpanKind};
use opentelemetry::Context;
use prometheus_client::metrics::counter::Counter;

/// Exports one span with these variables; the receiver's requests and the
/// exported/dropped counts once the span is through (or given up on).
async fn export_one(
    receiver: &Receiver,
    vars: &[(&str, String)],
    expect_delivery: bool,
) -> anyhow::Result<(u64, u64)> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let settings = OtlpSettings::from_lookup(|name| map.get(name).cloned())?;
    let (exported, dropped) = (Counter::default(), Counter::default());
    let tracing = Tracing::with_settings(&settings, "node-a", exported.clone(), dropped.clone())?;
    let mut span = tracing.start(
        "ferry.outbound",
        SpanKind::Client,
        &Context::new(),
        vec![opentelemetry::KeyValue::new(
            "test.case",
            format!("{vars:?}"),
        )],
    );
    span.end();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let done = if expect_delivery {
            receiver.count() > 0 && exported.get() > 0
        } else {
            dropped.get() > 0
        };
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((exported.get(), dropped.get()))
}

/// (case, receiver options, variables beyond the endpoint, a header the
/// receiver must see, its value).
type Case<'a> = (
    &'a str,
    ReceiverOptions,
    Vec<(&'a str, String)>,
    &'a str,
    &'a str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_otlp_setting_reaches_the_collector() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let tls = Some(pki.server.clone());
    let cases: Vec<Case> = vec![
        (
            "grpc over TLS with a CA file, gzip and a header",
            ReceiverOptions {
                tls: tls.clone(),
                ..Default::default()
            },
            vec![
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=se%20cret".into()),
            ],
            "grpc-encoding",
            "gzip",
        ),
        (
            "grpc with client certificates",
            ReceiverOptions {
                tls: tls.clone(),
                client_ca: Some(pki.ca_pem.clone()),
                ..Default::default()
            },
            vec![
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", pki.path("ca.pem")),
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    pki.path("client.pem"),
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client-key.pem")),
            ],
            "content-type",
            "application/grpc",
        ),
        (
            "http/protobuf, gzip and a header",
            ReceiverOptions {
                http: true,
                ..Default::default()
            },
            vec![
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".into()),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=blue".into()),
            ],
            "content-encoding",
            "gzip",
        ),
        (
            "http/protobuf over TLS with a CA file and client certificates",
            ReceiverOptions {
                http: true,
                tls: tls.clone(),
                client_ca: Some(pki.ca_pem.clone()),
            },
            vec![
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf".into()),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.path("ca.pem")),
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    pki.path("client.pem"),
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.path("client-key.pem")),
            ],
            "content-type",
            "application/x-protobuf",
        ),
    ];
    for (case, options, mut vars, header, value) in cases {
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let receiver = Receiver::start_with_options("127.0.0.1:0".parse()?, options).await?;
        vars.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("{scheme}://{}", receiver.address),
        ));
        let (exported, dropped) = export_one(&receiver, &vars, true).await?;
        assert_eq!((exported, dropped), (1, 0), "{case}");
        let spans = receiver.spans();
        assert_eq!(spans.len(), 1, "{case}");
        assert_eq!(spans[0].span.name, "ferry.outbound", "{case}");
        let requests = receiver.requests();
        assert_eq!(
            requests[0].header(header),
            Some(value),
            "{case}: {requests:?}"
        );
        if let Some((_, h)) = vars.iter().find(|(k, _)| k.ends_with("HEADERS")) {
            let (name, expected) = h.split_once('=').unwrap();
            let expected = expected.replace("%20", " ");
            assert_eq!(
                requests[0].header(name),
                Some(expected.as_str()),
                "{case}: {requests:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_the_proxy_cannot_verify_receives_nothing() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    for http in [false, true] {
        let receiver = Receiver::start_with_options(
            "127.0.0.1:0".parse()?,
            ReceiverOptions {
                http,
                tls: Some(pki.server.clone()),
                ..Default::default()
            },
        )
        .await?;
        // Only the system's roots: the test CA is not among them.
        let mut vars = vec![(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("https://{}", receiver.address),
        )];
        if http {
            vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
        }
        vars.push(("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".into()));
        let (exported, dropped) = export_one(&receiver, &vars, false).await?;
        assert_eq!((exported, dropped), (0, 1), "http: {http}");
        assert_eq!(receiver.count(), 0, "http: {http}");
    }
    Ok(())
}
