//! The delta stream over real gRPC on loopback: subscribe, ACK, incremental
//! updates, NACK (the refused version is not sent again), and resume with
//! what the proxy already holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use ferry_api::model::{Node, NodeAddress};
use ferry_api::proto::config_discovery_client::ConfigDiscoveryClient;
use ferry_api::proto::{DeltaRequest, DeltaResponse, ResourceError, ResourceVersion};
use ferry_api::{ResourceBody, ResourceKey, VersionedResource};
use ferry_control_plane::push::{ConfigCache, ConfigDiscoveryService};
use ferry_control_plane::translate::{Change, Published, Scope};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn node(name: &str, ip: &str) -> (ResourceKey, Published) {
    let body = ResourceBody::Node(Box::new(Node {
        name: name.into(),
        addresses: vec![NodeAddress {
            kind: "InternalIP".into(),
            address: ip.into(),
        }],
        hbone: None,
        zone: None,
    }));
    (
        body.key(),
        Published::new(&VersionedResource::encode(&body), Scope::AllNodes),
    )
}

async fn serve(cache: Arc<ConfigCache>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConfigDiscoveryService::new(cache).into_server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

struct Stream {
    tx: mpsc::Sender<DeltaRequest>,
    rx: tonic::Streaming<DeltaResponse>,
}

impl Stream {
    async fn open(url: &str, node: &str, held: Vec<ResourceVersion>) -> Self {
        let mut client = ConfigDiscoveryClient::connect(url.to_string())
            .await
            .unwrap();
        let (tx, requests) = mpsc::channel(4);
        tx.send(DeltaRequest {
            node: node.into(),
            initial_versions: held,
            ..Default::default()
        })
        .await
        .unwrap();
        let rx = client
            .delta_config(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> DeltaResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5s")
            .unwrap()
            .expect("stream open")
    }

    async fn nothing_within(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.rx.message()).await {
            panic!("unexpected response: {message:?}");
        }
    }

    async fn ack(&self, response: &DeltaResponse, errors: Vec<ResourceError>) {
        self.tx
            .send(DeltaRequest {
                response_nonce: response.nonce.clone(),
                errors,
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn names(response: &DeltaResponse) -> Vec<String> {
    let mut names: Vec<String> = response
        .resources
        .iter()
        .map(|r| r.key.as_ref().unwrap().name.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn subscribe_ack_update_nack_and_resume() {
    let cache = ConfigCache::new();
    let (ka, a) = node("a", "10.0.0.1");
    let (kb, b) = node("b", "10.0.0.2");
    cache.commit(vec![
        Change::Upsert(ka.clone(), a.clone()),
        Change::Upsert(kb.clone(), b.clone()),
    ]);
    let url = serve(cache.clone()).await;

    // Subscribe with nothing: everything comes in the first response.
    let mut stream = Stream::open(&url, "node-1", vec![]).await;
    let first = stream.next().await;
    assert_eq!(names(&first), ["a", "b"]);
    stream.ack(&first, vec![]).await;

    // One change: only that resource.
    let (_, a2) = node("a", "10.0.0.9");
    cache.commit(vec![Change::Upsert(ka.clone(), a2.clone())]);
    let update = stream.next().await;
    assert_eq!(names(&update), ["a"]);
    assert!(update.removed.is_empty());

    // Changes made while a response is unacknowledged wait, then come together.
    cache.commit(vec![Change::Remove(kb.clone())]);
    stream.nothing_within(Duration::from_millis(200)).await;
    stream.ack(&update, vec![]).await;
    let removal = stream.next().await;
    assert!(removal.resources.is_empty());
    assert_eq!(removal.removed.len(), 1);
    assert_eq!(removal.removed[0].name, "b");
    stream.ack(&removal, vec![]).await;

    // A NACK: the refused version is not sent again, a newer one is.
    let (_, a3) = node("a", "10.0.0.10");
    cache.commit(vec![Change::Upsert(ka.clone(), a3.clone())]);
    let refused = stream.next().await;
    stream
        .ack(
            &refused,
            vec![ResourceError {
                key: Some(ka.to_proto()),
                message: "addresses[0]: nope".into(),
            }],
        )
        .await;
    let (kc, c) = node("c", "10.0.0.3");
    cache.commit(vec![Change::Upsert(kc.clone(), c.clone())]);
    let next = stream.next().await;
    assert_eq!(names(&next), ["c"], "a's refused version is not resent");
    stream.ack(&next, vec![]).await;
    let (_, a4) = node("a", "10.0.0.11");
    cache.commit(vec![Change::Upsert(ka.clone(), a4.clone())]);
    let fixed = stream.next().await;
    assert_eq!(names(&fixed), ["a"]);
    assert_eq!(fixed.resources[0].version, a4.version());
    stream.ack(&fixed, vec![]).await;
    drop(stream);

    // Resume holding a4 and c: the first response is empty (in sync).
    let held = vec![
        ResourceVersion {
            key: Some(ka.to_proto()),
            version: a4.version(),
        },
        ResourceVersion {
            key: Some(kc.to_proto()),
            version: c.version(),
        },
    ];
    let mut resumed = Stream::open(&url, "node-1", held.clone()).await;
    let first = resumed.next().await;
    assert!(
        first.resources.is_empty() && first.removed.is_empty(),
        "{first:?}"
    );

    // Resume holding a stale a and a resource that no longer exists.
    let stale = vec![
        ResourceVersion {
            key: Some(ka.to_proto()),
            version: a.version(),
        },
        ResourceVersion {
            key: Some(kb.to_proto()),
            version: b.version(),
        },
    ];
    let mut behind = Stream::open(&url, "node-2", stale).await;
    let first = behind.next().await;
    assert_eq!(names(&first), ["a", "c"]);
    assert_eq!(first.removed.len(), 1);
    assert_eq!(first.removed[0].name, "b");
}

#[tokio::test]
async fn a_stream_without_a_node_name_is_refused() {
    let url = serve(ConfigCache::new()).await;
    let mut client = ConfigDiscoveryClient::connect(url).await.unwrap();
    let (tx, requests) = mpsc::channel(1);
    tx.send(DeltaRequest::default()).await.unwrap();
    let status = client
        .delta_config(ReceiverStream::new(requests))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "the first request must name the node");
}
