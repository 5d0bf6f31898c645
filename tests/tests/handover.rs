//! Hitless replacement of a node proxy: node-a's proxy is replaced by a
//! new process twice in a row while a 1 GiB transfer, a new connection
//! every 10 ms and a denied pair run through it; every byte arrives, no
//! connection fails, the denied pair stays denied and the link between
//! the nodes carries only TLS (`ferryctl::lab::handover`). Needs root (see
//! `netns::root_or_skip`).

use ferry_tests::netns::root_or_skip;
use ferryctl::lab::Lab;

#[test]
fn a_proxy_is_replaced_without_a_failed_or_unprotected_connection() -> anyhow::Result<()> {
    if !root_or_skip("a_proxy_is_replaced_without_a_failed_or_unprotected_connection") {
        return Ok(());
    }
    let examples = ferry_tests::repo_root().join("deploy/examples");
    let mut lab = Lab::up(&examples, &format!("fo{}", std::process::id() % 10_000))?;
    let results = lab.check_handover();
    for r in &results {
        eprintln!(
            "{} {}: {}",
            if r.ok { "ok  " } else { "FAIL" },
            r.what,
            r.saw
        );
    }
    for r in results {
        assert!(r.ok, "{}: {}\n{}", r.what, r.saw, lab.logs());
    }
    Ok(())
}
