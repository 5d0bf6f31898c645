//! `ferryctl policy reachability` and `explain` on the example manifests.

use std::process::Command;

use serde_json::{json, Value};

fn ferryctl(args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let out = Command::new(ferry_tests::binary("ferryctl")?)
        .args(["policy"])
        .args(args)
        .output()?;
    Ok((out.status.code(), String::from_utf8(out.stdout)?))
}

fn examples() -> String {
    ferry_tests::repo_root()
        .join("deploy/examples")
        .display()
        .to_string()
}

#[test]
fn reachability_is_a_json_array_of_every_pair_port_and_protocol() -> anyhow::Result<()> {
    let (code, out) = ferryctl(&[
        "reachability",
        "--manifests",
        &examples(),
        "--ports",
        "9090,9091",
        "--output",
        "json",
    ])?;
    assert_eq!(code, Some(0));
    let rows: Vec<Value> = serde_json::from_str(&out)?;
    // 6 pods x 6 pods (a pod to itself included) x 2 ports x 3 protocols.
    assert_eq!(rows.len(), 6 * 6 * 2 * 3);
    let find = |from: &str, to: &str, port: u16, protocol: &str| {
        rows.iter()
            .find(|r| {
                r["from"] == from && r["to"] == to && r["port"] == port && r["protocol"] == protocol
            })
            .cloned()
    };
    assert_eq!(
        find("shop/frontend", "shop/backend-1", 9090, "TCP"),
        Some(
            json!({"from": "shop/frontend", "to": "shop/backend-1", "port": 9090, "protocol": "TCP", "allowed": true})
        )
    );
    // The named port `api` is 9091 on backend-3, 9090 on the others.
    assert_eq!(
        find("shop/frontend", "shop/backend-3", 9090, "TCP").map(|r| r["allowed"].clone()),
        Some(json!(false))
    );
    assert_eq!(
        find("shop/frontend", "shop/backend-3", 9091, "TCP").map(|r| r["allowed"].clone()),
        Some(json!(true))
    );
    assert_eq!(
        find("default/client", "shop/backend-1", 9090, "TCP").map(|r| r["allowed"].clone()),
        Some(json!(false))
    );
    assert_eq!(
        find("shop/frontend", "shop/backend-1", 9090, "UDP").map(|r| r["allowed"].clone()),
        Some(json!(false))
    );
    assert_eq!(
        find("default/client", "shop/frontend", 9090, "TCP").map(|r| r["allowed"].clone()),
        Some(json!(true))
    );

    let (code, table) = ferryctl(&[
        "reachability",
        "--manifests",
        &examples(),
        "--ports",
        "9090",
    ])?;
    assert_eq!(code, Some(0));
    assert!(
        table.contains("TCP/9090: rows connect to columns"),
        "{table}"
    );
    Ok(())
}

#[test]
fn explain_names_the_policy_and_rule() -> anyhow::Result<()> {
    let (code, out) = ferryctl(&[
        "explain",
        "--manifests",
        &examples(),
        "--from",
        "shop/frontend",
        "--to",
        "shop/backend-1:9090",
    ])?;
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        "ALLOWED\negress: allowed (no policy isolates the pod for egress)\ningress: allowed by shop/backend-from-frontend, ingress rule 0\n"
    );
    let (_, out) = ferryctl(&[
        "explain",
        "--manifests",
        &examples(),
        "--from",
        "default/client",
        "--to",
        "shop/backend-1:9090/TCP",
        "--output",
        "json",
    ])?;
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["allowed"], false);
    assert_eq!(
        v["ingress"],
        json!({"result": "denied", "policies": ["shop/backend-from-frontend"]})
    );
    let (code, _) = ferryctl(&[
        "explain",
        "--manifests",
        &examples(),
        "--from",
        "default/client",
        "--to",
        "shop/backend-1",
    ])?;
    assert_eq!(
        code,
        Some(2),
        "a destination without a port is a usage error"
    );
    Ok(())
}
