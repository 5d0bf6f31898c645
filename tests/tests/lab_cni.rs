//! Capture works whichever way the CNI wires pods: the example cluster's
//! checks pass with pods on a bridge (`cni0`, flannel style), on routed
//! veths (`cali*`, Calico style) and on point-to-point veths (`veth*`,
//! kindnet style), with the proxies finding the interface themselves
//! (`--capture-interface auto`), and servers see their clients' addresses
//! (`ferryctl::lab::addresses`). A setting that matches none of the
//! node's pods is reported (log and metric), not silently capturing
//! nothing. Needs root (see `netns::root_or_skip`).

use std::time::Duration;

use ferry_tests::netns::root_or_skip;
use ferry_tests::{prom, wait_for};
use ferryctl::lab::cni::Cni;
use ferryctl::lab::{Lab, LabOptions};

/// `text` without terminal colour codes (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn capture_works_with_each_cni_style() -> anyhow::Result<()> {
    if !root_or_skip("capture_works_with_each_cni_style") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    for (i, cni) in [Cni::Bridge, Cni::Routed, Cni::PointToPoint]
        .into_iter()
        .enumerate()
    {
        let lab = Lab::up_with(
            &examples,
            &format!("fc{i}{}", std::process::id() % 1_000),
            LabOptions {
                cni,
                ..Default::default()
            },
        )?;
        for r in lab.check_examples() {
            assert!(r.ok, "{cni:?}: {}: {}\n{}", r.what, r.saw, lab.logs());
        }
        // Servers see their clients' addresses (behind the bridge, a
        // same-node client falls back to the node's, counted).
        for r in lab.check_client_addresses() {
            assert!(r.ok, "{cni:?}: {}: {}\n{}", r.what, r.saw, lab.logs());
        }
        let found = format!("interface={}", cni.capture_interface());
        let logs = plain(&lab.logs());
        assert_eq!(
            logs.matches("capture interface found from the routes")
                .count(),
            2,
            "{cni:?}: each proxy finds the interface\n{logs}"
        );
        assert!(logs.contains(&found), "{cni:?}: expected {found}\n{logs}");
    }
    Ok(())
}

#[test]
fn a_capture_interface_that_misses_the_pods_is_reported() -> anyhow::Result<()> {
    if !root_or_skip("a_capture_interface_that_misses_the_pods_is_reported") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    // Calico-style pods, and the bridge name a flannel cluster would use.
    let lab = Lab::up_with(
        &examples,
        &format!("fw{}", std::process::id() % 10_000),
        LabOptions {
            cni: Cni::Routed,
            capture_interface: Some("cni0".into()),
            ..Default::default()
        },
    )?;
    for node in ["node-a", "node-b"] {
        wait_for(
            &format!("{node} reports its uncaptured pods"),
            Duration::from_secs(10),
            || {
                let text = lab.exec_in(node, "curl", &["-sf", "127.0.0.1:15000/metrics"])?;
                Ok(prom::parse(&text)
                    .iter()
                    .any(|s| s.name == "ferry_capture_pods_outside_interface" && s.value >= 2.0)
                    .then_some(()))
            },
        )
        .map_err(|e| e.context(lab.logs()))?;
    }
    let logs = plain(&lab.logs());
    assert!(
        logs.contains("routed by interfaces the capture rules do not match"),
        "{logs}"
    );
    Ok(())
}
