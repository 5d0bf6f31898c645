//! Compiles the protocol with protox (pure Rust): the build needs no system
//! `protoc`. Also records the git commit the binaries are built from
//! ([`ferry_api::build`](src/build.rs)).

use std::path::Path;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/ferry/v1/config.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .btree_map(".")
        .bytes(".ferry.v1.DeltaResponseEncoded.resources")
        .compile_fds(descriptors.clone())?;
    // The control plane's server: the same service, answering with
    // DeltaResponseEncoded (wire-identical to DeltaResponse).
    let server = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server)
        .extern_path(
            ".ferry.v1.DeltaResponse",
            "crate::proto::DeltaResponseEncoded",
        )
        .extern_path(".ferry.v1", "crate::proto")
        .compile_fds(descriptors)?;
    println!("cargo:rustc-env=FERRY_GIT_COMMIT={}", git_commit());
    Ok(())
}

/// `FERRY_GIT_COMMIT` when set (an image build without `.git`), else what
/// `git` says HEAD is, else `unknown`.
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=FERRY_GIT_COMMIT");
    if let Ok(commit) = std::env::var("FERRY_GIT_COMMIT") {
        if !commit.trim().is_empty() {
            return commit.trim().to_string();
        }
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // Rebuilt when HEAD moves: a commit, a checkout.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(head).display());
        }
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("packed-refs").display()
        );
    }
    git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
}
