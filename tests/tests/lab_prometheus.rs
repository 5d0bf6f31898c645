//! A real Prometheus (Debian's) in the namespace lab, scraping every proxy
//! and the control plane: known traffic goes through the example cluster
//! (allowed across nodes over mTLS, through a service, denied by policy,
//! leaving the mesh, plaintext arriving for a mesh pod), then every query
//! of the shipped Grafana dashboard and every alert expression of the
//! chart is evaluated by that Prometheus, and their values are checked:
//! the panels show the traffic that was sent, each denial once, full mTLS
//! coverage; no alert fires on a healthy mesh.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_tests::netns::root_or_skip;
use ferry_tests::wait_for;
use ferryctl::lab::{Lab, LabOptions};

type Series = Vec<(BTreeMap<String, String>, f64)>;

/// The dashboard's queries by panel id, `$__rate_interval` as Grafana
/// would give it for a 5-minute view.
fn dashboard_queries() -> anyhow::Result<BTreeMap<u64, Vec<String>>> {
    let text = std::fs::read_to_string(
        ferry_tests::repo_root().join("deploy/dashboards/ferry-mesh.json"),
    )?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = BTreeMap::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let exprs: Vec<String> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .map(|e| e.replace("$__rate_interval", "5m"))
            .collect();
        if let (Some(id), false) = (panel["id"].as_u64(), exprs.is_empty()) {
            out.insert(id, exprs);
        }
    }
    Ok(out)
}

/// The chart's alert expressions by name, with the certificate margin the
/// default values give (a quarter of 86,400 s).
fn alert_exprs() -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(
        ferry_tests::repo_root().join("deploy/helm/ferry/templates/prometheusrule.yaml"),
    )?;
    let mut out = BTreeMap::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert: ") {
            name = Some(n.to_string());
        } else if let (Some(expr), Some(n)) = (line.strip_prefix("expr: "), name.take()) {
            out.insert(n, expr.replace("{{ $certMargin }}", "21600"));
        }
    }
    Ok(out)
}

fn total(series: &Series) -> f64 {
    series.iter().map(|(_, v)| v).sum()
}

fn with<'a>(
    series: &'a Series,
    labels: &[(&str, &str)],
) -> Vec<&'a (BTreeMap<String, String>, f64)> {
    series
        .iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

#[test]
fn dashboard_and_alert_queries_show_the_traffic_that_was_sent() -> anyhow::Result<()> {
    if !root_or_skip("dashboard_and_alert_queries_show_the_traffic_that_was_sent") {
        return Ok(());
    }
    if which("prometheus").is_none() {
        assert!(
            std::env::var("FERRY_E2E").ok().as_deref() != Some("required"),
            "prometheus (Debian package prometheus) is required"
        );
        eprintln!("skipping: no prometheus binary");
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let lab = Lab::up_with(
        &examples,
        &format!("fp{}", std::process::id() % 10_000),
        LabOptions {
            prometheus: true,
            ..LabOptions::default()
        },
    )?;
    let logs = || lab.logs();

    // Known traffic, in two rounds a few scrapes apart: a counter's first
    // scrape shows no increase, so the first round makes the series and
    // the second is what rates see.
    let traffic = |n: usize| -> anyhow::Result<()> {
        // Allowed across nodes over mTLS: frontend (node-a) to backend-2
        // (node-b), and through the backend service.
        for _ in 0..2 * n {
            lab.curl("shop/frontend", "http://10.244.2.11:9090/")?;
        }
        for _ in 0..n {
            lab.curl("shop/frontend", "http://backend.shop/")?;
        }
        // Denied by the backends' policy: db-0 (node-b) to backend-1 (node-a).
        for _ in 0..n {
            anyhow::ensure!(lab.curl("shop/db-0", "http://10.244.1.11:9090/").is_err());
        }
        // Leaving the mesh: to the client, a pod outside it.
        for _ in 0..n {
            lab.curl("shop/frontend", "http://10.244.2.30:8080/")?;
        }
        // Plaintext arriving for a mesh pod: the client to the frontend.
        for _ in 0..n {
            lab.curl("default/client", "http://10.244.1.10:8080/")?;
        }
        Ok(())
    };
    let q = |expr: &str| -> anyhow::Result<Series> { lab.prometheus_query(expr) };
    // A round is in once a scrape has its counters at their new values.
    let stored = |denied: f64, plaintext: f64| -> anyhow::Result<()> {
        wait_for(
            "a scrape after the traffic",
            Duration::from_secs(60),
            || {
                let d = total(&q(
                    "sum(ferry_connection_failures_total{reason=\"policy_denied\"})",
                )?);
                let p = total(&q(
                "sum(ferry_connections_opened_total{reporter=\"destination\",mode=\"plaintext\"})",
            )?);
                Ok((d >= denied && p >= plaintext).then_some(()))
            },
        )
        .with_context_logs(&logs)
    };
    traffic(1)?;
    stored(1.0, 1.0)?;
    traffic(3)?;
    stored(4.0, 4.0)?;
    // Each denial is counted once, by the proxy that denied it.
    assert_eq!(
        total(&q(
            "sum(ferry_connection_failures_total{reason=\"policy_denied\"})"
        )?),
        4.0
    );
    // The rates over the window see the second round, which was scraped
    // after the first.
    wait_for("rates above zero", Duration::from_secs(30), || {
        let r = total(&q(
            "sum(rate(ferry_connection_failures_total{reason=\"policy_denied\"}[5m]))",
        )?);
        Ok((r > 0.0).then_some(()))
    })
    .with_context_logs(&logs)?;

    let queries = dashboard_queries()?;
    let mut results: BTreeMap<u64, Vec<Series>> = BTreeMap::new();
    for (id, exprs) in &queries {
        for expr in exprs {
            let series = q(expr).map_err(|e| anyhow::anyhow!("panel {id}: {expr}: {e}"))?;
            results.entry(*id).or_default().push(series);
        }
    }
    let panel = |id: u64, target: usize| -> &Series { &results[&id][target] };
    let backend = "backend.shop.svc.cluster.local";

    // 2: connections per second, source workload to service.
    let through = with(
        panel(2, 0),
        &[
            ("source_workload", "frontend"),
            ("destination_service", backend),
        ],
    );
    assert_eq!(through.len(), 1, "panel 2: {:?}", panel(2, 0));
    assert!(through[0].1 > 0.0);
    // 3: throughput by service, both directions.
    for target in 0..2 {
        assert!(
            with(panel(3, target), &[("destination_service", backend)])
                .iter()
                .all(|(_, v)| *v > 0.0)
                && !with(panel(3, target), &[("destination_service", backend)]).is_empty(),
            "panel 3: {:?}",
            panel(3, target)
        );
    }
    // 4: open connections by mode: none open now, the series exist.
    assert!(
        !panel(4, 0).is_empty() && total(panel(4, 0)) == 0.0,
        "panel 4: {:?}",
        panel(4, 0)
    );
    // 5: duration quantiles per mode, finite and small (lab links).
    for target in 0..2 {
        let hbone = with(panel(5, target), &[("mode", "hbone")]);
        assert!(
            hbone.len() == 1 && hbone[0].1.is_finite() && hbone[0].1 < 60.0,
            "panel 5: {:?}",
            panel(5, target)
        );
    }
    // 7: failures by reason: the denial at the destination, and its echo
    // at the source as denied_by_destination.
    assert!(
        !with(
            panel(7, 0),
            &[("reporter", "destination"), ("reason", "policy_denied")]
        )
        .is_empty(),
        "panel 7: {:?}",
        panel(7, 0)
    );
    assert!(
        !with(
            panel(7, 0),
            &[("reporter", "source"), ("reason", "denied_by_destination")]
        )
        .is_empty(),
        "panel 7: {:?}",
        panel(7, 0)
    );
    // 8: policy denials, each counted once: the panel equals the
    // destination's count alone.
    let denials = with(
        panel(8, 0),
        &[
            ("source_workload", "db"),
            ("destination_workload", "backend"),
        ],
    );
    assert_eq!(denials.len(), 1, "panel 8: {:?}", panel(8, 0));
    // Evaluated at one instant: the panel's total over the denying
    // proxies' own count.
    let once = q(&format!(
        "sum({}) / sum(rate(ferry_connection_failures_total{{reason=\"policy_denied\",reporter=\"destination\"}}[5m]))",
        queries[&8][0]
    ))?;
    let ratio = total(&once);
    assert!((ratio - 1.0).abs() < 1e-9, "denials counted {ratio} times");
    // 9: error ratio: some failures, mostly successes.
    let errors = total(panel(9, 0));
    assert!(errors > 0.0 && errors < 0.5, "panel 9: {errors}");
    // 10: every mesh-to-mesh connection across nodes is mTLS.
    assert_eq!(total(panel(10, 0)), 1.0, "panel 10: {:?}", panel(10, 0));
    // 11: plaintext arriving for mesh pods: the client's.
    assert!(total(panel(11, 0)) > 0.0, "panel 11: {:?}", panel(11, 0));
    // 13: every identity's certificate has hours left.
    assert!(
        !panel(13, 0).is_empty() && panel(13, 0).iter().all(|(_, v)| *v > 3600.0),
        "panel 13: {:?}",
        panel(13, 0)
    );
    // 14: configuration age small, a revision per proxy.
    assert_eq!(panel(14, 0).len(), 2, "panel 14: {:?}", panel(14, 0));
    assert!(panel(14, 0).iter().all(|(_, v)| *v >= 0.0 && *v < 600.0));
    assert!(
        panel(14, 1).iter().all(|(_, v)| *v >= 1.0),
        "panel 14: {:?}",
        panel(14, 1)
    );
    // 15: the HBONE pool of each proxy.
    assert_eq!(panel(15, 0).len(), 2, "panel 15: {:?}", panel(15, 0));
    // 16: no tracing in the lab: nothing exported or dropped.
    assert_eq!(total(panel(16, 0)) + total(panel(16, 1)), 0.0);
    let checked: BTreeSet<u64> = [2, 3, 4, 5, 7, 8, 9, 10, 11, 13, 14, 15, 16].into();
    assert_eq!(
        queries.keys().copied().collect::<BTreeSet<_>>(),
        checked,
        "a panel was added or removed: give it a check here"
    );

    // Every alert expression evaluates, and none fires on a healthy mesh.
    let alerts = alert_exprs()?;
    assert!(alerts.len() >= 10, "{alerts:?}");
    for (name, expr) in &alerts {
        let firing = q(expr).map_err(|e| anyhow::anyhow!("{name}: {expr}: {e}"))?;
        assert!(
            firing.is_empty(),
            "{name} fires on a healthy mesh: {firing:?}"
        );
    }
    // The alerts' inputs are there (an alert over a missing metric would
    // never fire): the control plane sees both proxies.
    assert_eq!(total(&q("sum(ferry_cp_connected_proxies)")?), 2.0);
    let connected = q("ferry_control_plane_connected")?;
    assert!(
        connected.len() == 2 && connected.iter().all(|(_, v)| *v == 1.0),
        "{connected:?}"
    );
    assert_eq!(
        q("ferry_build_info")?.len(),
        3,
        "two proxies and the control plane"
    );
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// Adds the lab's logs to a failure.
trait WithLogs<T> {
    fn with_context_logs(self, logs: &dyn Fn() -> String) -> anyhow::Result<T>;
}

impl<T> WithLogs<T> for anyhow::Result<T> {
    fn with_context_logs(self, logs: &dyn Fn() -> String) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::anyhow!("{e:#}\n{}", logs()))
    }
}
