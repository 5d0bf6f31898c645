//! The HBONE listener of a real proxy refuses every bad peer: a client
//! certificate from another CA, from another trust domain, an expired one,
//! a server identity other than the one expected, and plaintext; and it
//! resumes no TLS session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::identity::Identity;
use ferry_pki::Authority;
use ferry_tests::net::EchoServer;
use ferry_tests::{LoopbackMesh, MeshOptions, NodeSpec};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const N: u8 = 35;

fn manifests() -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-b}}\nstatus: {{addresses: [{{type: InternalIP, address: 127.{N}.0.2}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  nodeName: node-b\n  serviceAccountName: backend\n  containers: [{{name: c, image: echo}}]\nstatus: {{phase: Running, podIP: 127.{N}.2.11, conditions: [{{type: Ready, status: \"True\"}}]}}\n"
    )
}

/// A workload certificate for `identity` signed by `ca`, valid for `lifetime`.
fn certified(ca: &Authority, identity: &Identity, lifetime: Duration) -> Arc<CertifiedKey> {
    let (csr, key) = ferry_pki::workload_csr(identity).unwrap();
    let params = rcgen_params(&csr);
    let pem = ca.sign_workload(identity, &params, lifetime).unwrap();
    let chain = ferry_proxy::identity::pem_certs(&[pem]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).unwrap();
    Arc::new(CertifiedKey::new(chain, signer))
}

/// Reads a CSR without the trust-domain check (the tests forge foreign identities on purpose).
fn rcgen_params(csr: &str) -> ferry_pki::CsrParams {
    ferry_pki::CsrParams::from_pem(csr).unwrap()
}

/// Opens mTLS to the proxy's HBONE port and CONNECTs to the backend;
/// returns the banner or the error.
async fn attempt(
    hbone: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    client: Arc<CertifiedKey>,
    expected: Identity,
    asked: &Identity,
) -> Result<String, String> {
    let config = ferry_proxy::identity::tls::client_config(roots, client, expected)
        .map_err(|e| e.to_string())?;
    attempt_with(hbone, Arc::new(config), asked)
        .await
        .map(|(banner, _)| banner)
}

/// [`attempt`] with a given client config; also says how the TLS
/// handshake went (full or resumed).
async fn attempt_with(
    hbone: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    asked: &Identity,
) -> Result<(String, Option<rustls::HandshakeKind>), String> {
    let tcp = TcpStream::connect(hbone).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(asked.server_name()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let kind = tls.get_ref().1.handshake_kind();
    let (mut sender, connection) = h2::client::handshake(tls)
        .await
        .map_err(|e| format!("h2: {e}"))?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("127.{N}.2.11:9090"))
        .body(())
        .unwrap();
    let (response, _send) = sender
        .send_request(request, false)
        .map_err(|e| format!("request: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut body = response.into_body();
    let data = body
        .data()
        .await
        .ok_or("no data")?
        .map_err(|e| e.to_string())?;
    Ok((String::from_utf8_lossy(&data).trim().to_string(), kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hbone_listener_refuses_bad_peers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("cluster.yaml"), manifests())?;
    let _backend = EchoServer::start(format!("127.{N}.2.11:9090").parse()?, "backend").await?;
    let nodes = [NodeSpec::new("node-b", &format!("127.{N}.0.2"))?];
    let options = MeshOptions {
        pki: true,
        ..MeshOptions::default()
    };
    let mesh =
        tokio::task::block_in_place(|| LoopbackMesh::start_with(dir.path(), &nodes, options))?;
    tokio::task::block_in_place(|| {
        mesh.wait_all("certificate", |d| {
            d["certificates"].as_array().is_some_and(|c| c.len() == 1)
        })
    })?;
    let hbone = mesh.proxy("node-b")?.hbone;
    let pki = mesh.pki.as_ref().unwrap().path();
    let ca = Authority::load(pki)?;
    let roots = Arc::new(ferry_proxy::identity::root_store(ca.cert_pem())?);
    let td = ca.trust_domain().to_string();
    let backend = Identity::new(&td, "shop", "backend");
    let client_id = Identity::new(&td, "shop", "client");
    let hour = Duration::from_secs(3600);

    // A good client gets through (the control case).
    let good = certified(&ca, &client_id, hour);
    let control = attempt(
        hbone,
        roots.clone(),
        good.clone(),
        backend.clone(),
        &backend,
    )
    .await;
    assert_eq!(control, Ok("backend".to_string()), "{}", mesh.diagnostics());

    // No session resumption, even for a client that keeps sessions: each
    // connection's certificates are verified anew (the listener issues
    // no tickets and stores no sessions).
    let mut keeping =
        ferry_proxy::identity::tls::client_config(roots.clone(), good.clone(), backend.clone())?;
    keeping.resumption = rustls::client::Resumption::in_memory_sessions(8);
    let keeping = Arc::new(keeping);
    for round in 0..2 {
        let (banner, kind) = attempt_with(hbone, keeping.clone(), &backend)
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(banner, "backend");
        assert_eq!(
            kind,
            Some(rustls::HandshakeKind::Full),
            "connection {round}"
        );
    }

    // A certificate from another CA.
    let other_ca = Authority::generate(&td, hour)?;
    let foreign = certified(&other_ca, &client_id, hour);
    // (The client may see the refusal at the handshake or at its first request:
    // in TLS 1.3 the server judges the client certificate after the client is done.)
    assert!(
        attempt(hbone, roots.clone(), foreign, backend.clone(), &backend)
            .await
            .is_err()
    );

    // The mesh CA, but another trust domain.
    let elsewhere = certified(
        &ca,
        &Identity::new("elsewhere.example", "shop", "client"),
        hour,
    );
    assert!(
        attempt(hbone, roots.clone(), elsewhere, backend.clone(), &backend)
            .await
            .is_err()
    );

    // Expired.
    let expired = certified(&ca, &client_id, Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        attempt(hbone, roots.clone(), expired, backend.clone(), &backend)
            .await
            .is_err()
    );

    // Identity mismatch: we ask for the backend but expect someone else.
    let err = attempt(
        hbone,
        roots.clone(),
        good.clone(),
        Identity::new(&td, "shop", "frontend"),
        &backend,
    )
    .await
    .unwrap_err();
    assert!(err.contains("identity mismatch"), "{err}");

    // An identity this node does not serve: no certificate, no handshake.
    let nobody = Identity::new(&td, "shop", "nobody");
    assert!(attempt(hbone, roots.clone(), good, nobody.clone(), &nobody)
        .await
        .is_err());

    // Plaintext on 15008: no HTTP answer, the connection is closed.
    let mut plain = TcpStream::connect(hbone).await?;
    plain
        .write_all(format!("CONNECT 127.{N}.2.11:9090 HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await?;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext got an HTTP answer"
    );
    assert!(
        !answer.windows(7).any(|w| w == b"backend"),
        "plaintext reached the pod"
    );

    // The proxy says why it refused each one.
    let reasons = [
        "invalid peer certificate: BadSignature",
        "spiffe://elsewhere.example/ns/shop/sa/client is outside trust domain cluster.local",
        "invalid peer certificate: certificate expired",
        "no server certificate chain resolved",
        "received corrupt message of type InvalidContentType",
    ];
    let proxy = mesh.proxy("node-b")?;
    let logged = tokio::task::block_in_place(|| {
        ferry_tests::wait_for("every refusal logged", Duration::from_secs(5), || {
            let log = proxy.process.log();
            Ok(reasons.iter().all(|r| log.contains(r)).then_some(()))
        })
    });
    assert!(
        logged.is_ok(),
        "missing reasons in the proxy log:\n{}",
        proxy.process.log()
    );
    // And counts them as TLS failures, each of the five refused handshakes.
    let (_, text) = tokio::task::block_in_place(|| ferry_tests::http_get(proxy.admin, "/metrics"))?;
    let failures = ferry_tests::prom::sum(
        &ferry_tests::prom::parse(&text),
        "ferry_connection_failures_total",
        &[("reporter", "destination"), ("reason", "tls_failure")],
    );
    assert!(failures >= 5.0, "{failures} TLS failures counted:\n{text}");
    Ok(())
}

/// One authenticated peer holds at most `--hbone-streams` streams on a
/// connection, and a connection left without streams is closed after
/// `--hbone-idle-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_bounded_in_streams_and_idle_time() -> anyhow::Result<()> {
    const M: u8 = 42;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("cluster.yaml"),
        manifests().replace(&format!("127.{N}."), &format!("127.{M}.")),
    )?;
    let _backend = EchoServer::start(format!("127.{M}.2.11:9090").parse()?, "backend").await?;
    let nodes = [NodeSpec::new("node-b", &format!("127.{M}.0.2"))?];
    let options = MeshOptions {
        pki: true,
        proxy_args: ["--hbone-streams", "3", "--hbone-idle-timeout", "1s"]
            .map(String::from)
            .to_vec(),
        ..MeshOptions::default()
    };
    let mesh =
        tokio::task::block_in_place(|| LoopbackMesh::start_with(dir.path(), &nodes, options))?;
    tokio::task::block_in_place(|| {
        mesh.wait_all("certificate", |d| {
            d["certificates"].as_array().is_some_and(|c| c.len() == 1)
        })
    })?;
    let hbone = mesh.proxy("node-b")?.hbone;
    let ca = Authority::load(mesh.pki.as_ref().unwrap().path())?;
    let roots = Arc::new(ferry_proxy::identity::root_store(ca.cert_pem())?);
    let td = ca.trust_domain().to_string();
    let backend = Identity::new(&td, "shop", "backend");
    let client = certified(
        &ca,
        &Identity::new(&td, "shop", "client"),
        Duration::from_secs(3600),
    );
    let config = ferry_proxy::identity::tls::client_config(roots, client, backend.clone())?;
    let tcp = TcpStream::connect(hbone).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(backend.server_name())?, tcp)
        .await?;
    let (mut sender, connection) = h2::client::handshake(tls).await?;
    let connection = tokio::spawn(connection);
    let connect = || {
        http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(format!("127.{M}.2.11:9090"))
            .body(())
            .unwrap()
    };
    // Three streams open and answered...
    let mut open = Vec::new();
    for _ in 0..3 {
        sender = sender.ready().await?;
        let (response, send) = sender.send_request(connect(), false)?;
        let response = tokio::time::timeout(Duration::from_secs(5), response).await??;
        assert_eq!(response.status(), 200);
        open.push((response, send));
    }
    // ...and a fourth waits (the proxy's SETTINGS allow three at a time)
    // until one of them ends.
    sender = sender.ready().await?;
    let (fourth, fourth_send) = sender.send_request(connect(), false)?;
    let mut fourth = Box::pin(fourth);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut fourth)
            .await
            .is_err(),
        "a fourth concurrent stream was allowed"
    );
    // Ends a stream as a client would: END_STREAM, then the reply to its end.
    async fn finish(
        (response, mut send): (http::Response<h2::RecvStream>, h2::SendStream<bytes::Bytes>),
    ) -> anyhow::Result<()> {
        send.send_data(bytes::Bytes::new(), true)?;
        let mut body = response.into_body();
        while let Some(data) = tokio::time::timeout(Duration::from_secs(5), body.data()).await? {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
        }
        Ok(())
    }
    finish(open.pop().ok_or_else(|| anyhow::anyhow!("no stream"))?).await?;
    let fourth = tokio::time::timeout(Duration::from_secs(5), fourth).await??;
    assert_eq!(fourth.status(), 200);
    // Once they are all finished, the idle connection is closed by the proxy.
    open.push((fourth, fourth_send));
    for stream in open {
        finish(stream).await?;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(
        ended.is_ok(),
        "the proxy kept an idle HBONE connection open past its idle timeout\n{}",
        mesh.diagnostics()
    );
    Ok(())
}
