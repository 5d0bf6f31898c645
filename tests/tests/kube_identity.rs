//! In-cluster identity against the in-test API server: control planes with
//! `--ca-secret` generate the CA once (two replicas starting together agree
//! on it), publish its root, and authenticate proxies by TokenReview. A
//! proxy with its DaemonSet's token gets config and certificates for its
//! node; rejected tokens, another service account's token, a token for
//! another audience and a token of a proxy on another node are refused;
//! the CA signs only for service accounts of pods on the token's node.
//! The status API admits only tokens RBAC allows to get
//! `meshstatus.ferry.dev` (TokenReview, then SubjectAccessReview).
//! Block 127.88.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ferry_api::identity::Identity;
use ferry_api::proto::certificate_authority_client::CertificateAuthorityClient;
use ferry_api::proto::mesh_status_client::MeshStatusClient;
use ferry_api::proto::{SignRequest, StatusRequest, StatusResponse};
use ferry_tests::apiserver::{ApiServer, Grant, TokenIdentity};
use ferry_tests::kube::{start_control_plane, start_proxy, ControlPlane, Proxy};
use ferry_tests::{http_get, wait_for};

/// This test's addresses: 127.88.0.0/16.
const BLOCK: u8 = 88;

const PROXY_ACCOUNT: &str = "system:serviceaccount:ferry-system:ferry-proxy";

fn proxy_pod(name: &str, uid: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ferry-system, uid: {uid}, labels: {{app: ferry-proxy}}}}\nspec: {{nodeName: {node}, hostNetwork: true, serviceAccountName: ferry-proxy, containers: [{{name: proxy, image: ferry}}]}}\nstatus: {{phase: Running, podIP: 172.30.0.99}}\n"
    )
}

fn token(username: &str, pod: Option<(&str, &str)>, audience: &str) -> TokenIdentity {
    TokenIdentity {
        username: username.into(),
        audiences: vec![audience.into()],
        pod: pod.map(|(p, u)| (p.into(), u.into())),
        node: None,
    }
}

fn dump(proxy: &Proxy) -> anyhow::Result<serde_json::Value> {
    let (_, text) = http_get(proxy.admin, "/config_dump")?;
    Ok(serde_json::from_str(&text)?)
}

/// Waits for the proxy's config stream to report an error containing `want`.
fn refused_with(proxy: &Proxy, want: &str) -> anyhow::Result<()> {
    wait_for(&format!("refusal: {want}"), Duration::from_secs(20), || {
        let d = dump(proxy)?;
        let error = d["xds"]["last_error"].as_str().unwrap_or("").to_string();
        Ok((error.contains(want) && d["ready"] == false).then_some(()))
    })
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", proxy.process.log()))
}

/// A TLS channel to `cp`, verified against the published root.
async fn channel(
    cp: &ControlPlane,
    root: &str,
) -> Result<tonic::transport::Channel, tonic::Status> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(root));
    tonic::transport::Endpoint::from_shared(format!("https://{}", cp.listen))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

async fn sign(
    cp: &ControlPlane,
    root: &str,
    token: &str,
    identity: &Identity,
) -> Result<(), tonic::Status> {
    let channel = channel(cp, root).await?;
    let (csr_pem, _) = ferry_pki::workload_csr(identity).unwrap();
    let mut request = tonic::Request::new(SignRequest {
        csr_pem,
        ttl_seconds: 600,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    CertificateAuthorityClient::new(channel)
        .sign(request)
        .await
        .map(|_| ())
}

async fn mesh_status(
    cp: &ControlPlane,
    root: &str,
    token: Option<&str>,
) -> Result<StatusResponse, tonic::Status> {
    let channel = channel(cp, root).await?;
    let mut request = tonic::Request::new(StatusRequest {});
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    MeshStatusClient::new(channel)
        .status(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_prove_their_node_with_service_account_tokens() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    for file in ["00-cluster.yaml", "10-pods.yaml", "20-services.yaml"] {
        server.apply_all(&std::fs::read_to_string(
            ferry_tests::repo_root().join("deploy/examples").join(file),
        )?)?;
    }
    server.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: ferry-system}\n")?;
    server.apply(&proxy_pod("ferry-proxy-a", "uid-a", "node-a"))?;
    server.apply(&proxy_pod("ferry-proxy-b", "uid-b", "node-b"))?;
    server.add_token(
        "token-a",
        token(PROXY_ACCOUNT, Some(("ferry-proxy-a", "uid-a")), "ferry"),
    );
    server.add_token(
        "token-b",
        token(PROXY_ACCOUNT, Some(("ferry-proxy-b", "uid-b")), "ferry"),
    );
    server.add_token(
        "token-app",
        token(
            "system:serviceaccount:shop:frontend",
            Some(("frontend", "uid-f")),
            "ferry",
        ),
    );
    server.add_token(
        "token-api-audience",
        token(PROXY_ACCOUNT, Some(("ferry-proxy-a", "uid-a")), "api"),
    );
    server.add_token(
        "token-no-audience",
        TokenIdentity {
            username: PROXY_ACCOUNT.into(),
            audiences: vec![],
            pod: Some(("ferry-proxy-a".into(), "uid-a".into())),
            node: None,
        },
    );
    server.add_token(
        "token-stale-pod",
        token(PROXY_ACCOUNT, Some(("ferry-proxy-a", "uid-old")), "ferry"),
    );

    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig())?;
    // Two replicas start together: one CA between them.
    let cp1 = start_control_plane(dir.path(), &kubeconfig, "control-plane-1", BLOCK, 1)?;
    let cp2 = start_control_plane(dir.path(), &kubeconfig, "control-plane-2", BLOCK, 2)?;
    let root = tokio::task::block_in_place(|| {
        wait_for("the published CA root", Duration::from_secs(30), || {
            Ok(server
                .get("v1", "ConfigMap", "ferry-system", "ferry-ca-root")
                .and_then(|m| m["data"]["ca.pem"].as_str().map(str::to_string)))
        })
    })?;
    let secret = server
        .get("v1", "Secret", "ferry-system", "ferry-ca")
        .expect("CA Secret");
    let stored = secret["data"]["ca.pem"].as_str().expect("base64 ca.pem");
    assert!(!stored.is_empty());
    std::fs::write(dir.path().join("ca.pem"), &root)?;

    // The node-a proxy, through either replica: config and certificates
    // for the service accounts of node-a's mesh pods.
    for (i, cp) in [&cp1, &cp2].into_iter().enumerate() {
        let proxy = start_proxy(
            dir.path(),
            cp,
            "node-a",
            "token-a",
            &format!("proxy-a{i}"),
            BLOCK,
            i as u8 + 1,
        )?;
        let d = tokio::task::block_in_place(|| {
            wait_for(
                "node-a's config and certificates",
                Duration::from_secs(30),
                || {
                    let d = dump(&proxy)?;
                    let certs = d["certificates"].as_array().map_or(0, Vec::len);
                    Ok((d["ready"] == true && certs >= 2).then_some(d))
                },
            )
        })
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", proxy.process.log()))?;
        let identities: Vec<&str> = d["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["identity"].as_str())
            .collect();
        assert!(
            identities.contains(&"spiffe://cluster.local/ns/shop/sa/frontend"),
            "{identities:?}"
        );
    }
    assert!(server.reviews() >= 1);

    // Refusals, each with its reason.
    let cases = [
        ("node-a", "nope", "token rejected"),
        ("node-a", "token-app", "is not the proxies' service account"),
        ("node-a", "token-api-audience", "token rejected"),
        ("node-a", "token-stale-pod", "was replaced"),
        ("node-a", "token-no-audience", "is not for audience ferry"),
        // A proxy on node-a pretending to serve node-b.
        (
            "node-b",
            "token-a",
            "credential is for node node-a, not node-b",
        ),
    ];
    let mut refused = Vec::new();
    for (i, (node, token, _)) in cases.iter().enumerate() {
        refused.push(start_proxy(
            dir.path(),
            &cp1,
            node,
            token,
            &format!("bad-{i}"),
            BLOCK,
            i as u8 + 10,
        )?);
    }
    for (proxy, (_, _, why)) in refused.iter().zip(cases) {
        tokio::task::block_in_place(|| refused_with(proxy, why))?;
    }

    // The CA signs for the token's node only.
    let frontend = Identity::new("cluster.local", "shop", "frontend");
    let db = Identity::new("cluster.local", "shop", "db");
    sign(&cp1, &root, "token-a", &frontend).await?;
    let err = sign(&cp1, &root, "token-a", &db).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    sign(&cp2, &root, "token-b", &db).await?;
    let err = sign(&cp1, &root, "nope", &frontend).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = sign(&cp1, &root, "token-app", &frontend).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // Refusals are remembered briefly: a flood of one bad token costs one
    // TokenReview, not one per request.
    let before = server.reviews();
    for _ in 0..20 {
        assert!(sign(&cp1, &root, "flood", &frontend).await.is_err());
    }
    assert_eq!(server.reviews() - before, 1, "one review for 20 refusals");

    // The status API: a person's token (no audience of ours) that RBAC
    // allows; nobody anonymous, no proxy token, no token without the grant.
    server.add_token("token-operator", TokenIdentity::user("alice"));
    server.add_token("token-intern", TokenIdentity::user("bob"));
    server.grant(Grant::mesh_status("alice", "ferry-system"));
    let err = mesh_status(&cp1, &root, None).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = mesh_status(&cp1, &root, Some("nope")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = mesh_status(&cp1, &root, Some("token-intern"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        err.message()
            .contains("bob may not get meshstatus.ferry.dev in namespace ferry-system"),
        "{err}"
    );
    // A proxy's token: its service account has no such grant.
    let err = mesh_status(&cp1, &root, Some("token-a")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let status = mesh_status(&cp1, &root, Some("token-operator")).await?;
    assert_eq!(status.replica, "control-plane-1");
    assert!(status.ca);
    assert_eq!(status.nodes, ["node-a", "node-b"]);
    assert!(
        status.certificates.iter().any(|c| c.node == "node-a"
            && c.identity == "spiffe://cluster.local/ns/shop/sa/frontend"
            && c.needed),
        "{:?}",
        status.certificates
    );
    // Outcomes are remembered: asking again costs no review.
    let before = (server.reviews(), server.access_reviews());
    mesh_status(&cp1, &root, Some("token-operator")).await?;
    assert_eq!((server.reviews(), server.access_reviews()), before);
    Ok(())
}
