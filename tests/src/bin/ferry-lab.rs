//! `ferry-lab`: the local multi-node mesh in network namespaces (what
//! `ferryctl lab` runs).
//!
//! `ferry-lab up [--manifests DIR] [--check]` builds the cluster from the
//! manifests (default deploy/examples), sends real traffic through the mesh
//! and prints what it saw; with `--check` it exits (non-zero on any
//! failure), otherwise it stays up until Ctrl-C. Everything it made is
//! removed on exit. Needs root.

use std::path::PathBuf;
use std::process::ExitCode;

use ferry_tests::lab::Lab;

fn usage() -> ExitCode {
    eprintln!("usage: ferry-lab up [--manifests DIR] [--check]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("up") {
        return usage();
    }
    let mut manifests = ferry_tests::repo_root().join("deploy/examples");
    let mut check = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--manifests" => match args.next() {
                Some(dir) => manifests = PathBuf::from(dir),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    if !ferry_tests::netns::is_root() {
        eprintln!("ferry-lab: needs root (it creates network namespaces and iptables rules); run it with sudo or as root");
        return ExitCode::from(2);
    }
    let lab = match Lab::up(&manifests, &format!("flab{}", std::process::id() % 10_000)) {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("ferry-lab: building the cluster failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "ferry lab: {} nodes, {} pods, control plane at {} (mTLS, mesh CA)",
        lab.nodes.len(),
        lab.pods.len(),
        lab.control_plane_ip
    );
    let results = lab.check_examples();
    let mut failed = 0;
    for r in &results {
        println!(
            "{} {}: {}",
            if r.ok { "ok  " } else { "FAIL" },
            r.what,
            r.saw
        );
        failed += usize::from(!r.ok);
    }
    println!("{} passed, {} failed", results.len() - failed, failed);
    if check {
        if failed > 0 {
            eprintln!("{}", lab.logs());
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    println!("the lab is up; Ctrl-C to tear it down");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-lab: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    drop(lab);
    ExitCode::SUCCESS
}
