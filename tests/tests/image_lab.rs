//! The container image runs the mesh: `scripts/image.sh` builds it from the
//! binaries under test (no container engine: mmdebstrap and umoci), and the
//! example cluster runs with its control plane, proxies and `ferry-certs`
//! chrooted into the unpacked image (`ferryctl::lab::image`), so the
//! image's own libraries and iptables serve real traffic. Needs root and
//! Debian's package mirror (the image's base; cached under target/ once
//! built).

use std::path::Path;
use std::process::Command;

use ferry_tests::netns::root_or_skip;
use ferryctl::lab::{Lab, LabOptions};

#[test]
fn the_example_cluster_runs_from_the_image() -> anyhow::Result<()> {
    if !root_or_skip("the_example_cluster_runs_from_the_image") {
        return Ok(());
    }
    let root = ferry_tests::repo_root();
    let binaries = ferry_tests::binary("ferry-proxy")?;
    let binaries = binaries.parent().unwrap_or(Path::new("."));
    let out = root.join("target/image-test");
    let built = Command::new(root.join("scripts/image.sh"))
        .arg("--binaries")
        .arg(binaries)
        .arg("--out")
        .arg(&out)
        .output()?;
    let stdout = String::from_utf8_lossy(&built.stdout);
    anyhow::ensure!(
        built.status.success(),
        "scripts/image.sh failed:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_string)
    };
    let reference = line("image: ").ok_or_else(|| anyhow::anyhow!("no image line in {stdout}"))?;
    let digest = line("digest: ").unwrap_or_default();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{stdout}"
    );

    let mut lab = Lab::up_with(
        &root.join("deploy/examples"),
        &format!("fi{}", std::process::id() % 10_000),
        LabOptions {
            image: Some(reference.clone()),
            ..Default::default()
        },
    )?;
    for r in lab.check_examples() {
        assert!(r.ok, "{}: {}\n{}", r.what, r.saw, lab.logs());
    }
    // The daemons are the image's binaries, not the build folder's.
    for (daemon, binary) in [
        ("control-plane", "ferry-control-plane"),
        ("node-a", "ferry-proxy"),
        ("node-b", "ferry-proxy"),
    ] {
        let pid = lab.pid(daemon)?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
        let root_dir = std::fs::read_link(format!("/proc/{pid}/root"))?;
        assert!(
            exe.ends_with(format!("usr/local/bin/{binary}"))
                && exe != ferry_tests::binary(binary)?
                && root_dir.ends_with("image/rootfs"),
            "{daemon} runs {} with root {}, not the image's {binary}",
            exe.display(),
            root_dir.display()
        );
    }
    Ok(())
}
