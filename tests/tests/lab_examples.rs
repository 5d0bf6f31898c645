//! The example cluster (deploy/examples) as network namespaces: two nodes,
//! their pods with unmodified HTTP servers, the control plane with the mesh
//! CA, one proxy per node with capture and DNS. Pods use plain curl with
//! service names. Needs root (see `netns::root_or_skip`).

use ferry_tests::lab::Lab;
use ferry_tests::netns::root_or_skip;

#[test]
fn the_example_cluster_serves_through_the_mesh() -> anyhow::Result<()> {
    if !root_or_skip("the_example_cluster_serves_through_the_mesh") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let lab = Lab::up(&examples, &format!("fl{}", std::process::id() % 10_000))?;
    let logs = || lab.logs();

    // frontend (node-a) -> backend by name: allowed by the policy, and
    // sticky (the example service has sessionAffinity: ClientIP).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let body = lab.curl("shop/frontend", "http://backend.shop.svc.cluster.local/")?;
        assert!(body.starts_with("shop/backend-"), "{body}\n{}", logs());
        seen.insert(body);
    }
    assert_eq!(
        seen.len(),
        1,
        "ClientIP affinity keeps one backend: {seen:?}"
    );
    // By pod address, the backends on node-b answer through HBONE.
    assert_eq!(
        lab.curl("shop/frontend", "http://10.244.2.11:9090/")?,
        "shop/backend-2"
    );
    assert_eq!(
        lab.curl("shop/frontend", "http://10.244.2.12:9091/")?,
        "shop/backend-3"
    );

    // client (default namespace, node-b) -> backend: the policy admits only the frontend.
    assert!(lab
        .curl("default/client", "http://backend.shop.svc.cluster.local/")
        .is_err());

    // client -> frontend by its namespace-qualified short name, across nodes.
    assert_eq!(
        lab.curl("default/client", "http://frontend.shop/")?,
        "shop/frontend",
        "{}",
        logs()
    );
    // Headless: the name resolves to the pod itself.
    assert_eq!(
        lab.curl("default/client", "http://db.shop:5432/")?,
        "shop/db-0"
    );

    // The checks `ferryctl lab up --check` runs.
    for r in lab.check_examples() {
        assert!(r.ok, "{}: {}\n{}", r.what, r.saw, logs());
    }

    // The cross-node connections were carried by HBONE (mTLS).
    let dump = lab.config_dump("node-b")?;
    assert!(
        dump["hbone_pool"]["handshakes"].as_u64() >= Some(1),
        "{}",
        dump["hbone_pool"]
    );
    Ok(())
}
