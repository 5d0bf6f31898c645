//! Running the lab's daemons from the container image (scripts/image.sh)
//! instead of the build folder: the image is unpacked with `umoci`, and each
//! daemon starts in its network namespace chrooted into the image's root
//! filesystem, so the binaries, their libraries and the iptables they run
//! are the image's. Containers themselves cannot run on the lab's machines;
//! a chroot is the part of a container that matters here (its own files),
//! while the network namespace is the lab's node, as `hostNetwork: true`
//! makes it on a cluster.
//!
//! Each daemon gets the lab's work folder (certificates, manifests, state)
//! at the same path inside the image, with `/proc`, `/dev` and the
//! namespace's `/etc/resolv.conf`: bind mounts made in the private mount
//! namespace `ip netns exec` (or `unshare -m`) gives the process, so they
//! vanish with it and nothing is left mounted on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Where the image's binaries are.
pub const BIN: &str = "/usr/local/bin";

/// Mounts what the daemon needs into the root filesystem (`$1`), the
/// work folder (`$2`) at its own path, then becomes `$3...` chrooted.
const ENTER: &str = r#"set -e
root=$1 work=$2
shift 2
mount --bind "$work" "$root$work"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
exec chroot "$root" "$@"
"#;

/// An unpacked image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its root filesystem.
    pub rootfs: PathBuf,
    /// The lab's work folder, mounted at the same path inside.
    work: PathBuf,
}

impl Image {
    /// Unpacks `reference` (`LAYOUT:TAG`, as scripts/image.sh prints it)
    /// into `work/image`, ready for [`Image::command`].
    pub fn unpack(reference: &str, work: &Path) -> anyhow::Result<Self> {
        let bundle = work.join("image");
        let out = Command::new("umoci")
            .args(["unpack", "--image", reference])
            .arg(&bundle)
            .output()
            .context("running umoci (apt-get install umoci)")?;
        if !out.status.success() {
            bail!(
                "umoci unpack --image {reference}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let rootfs = bundle.join("rootfs");
        let inside = rootfs.join(work.strip_prefix("/").unwrap_or(work));
        for dir in [inside.as_path(), &rootfs.join("proc"), &rootfs.join("dev")] {
            std::fs::create_dir_all(dir).with_context(|| format!("preparing {}", dir.display()))?;
        }
        let resolv = rootfs.join("etc/resolv.conf");
        if !resolv.exists() {
            std::fs::write(&resolv, "")
                .with_context(|| format!("creating {}", resolv.display()))?;
        }
        for name in ["ferry-proxy", "ferry-control-plane", "ferry-certs"] {
            let path = rootfs.join(BIN.trim_start_matches('/')).join(name);
            if !path.is_file() {
                bail!("{reference}: the image has no {BIN}/{name}");
            }
        }
        Ok(Self {
            rootfs,
            work: work.to_path_buf(),
        })
    }

    /// The arguments (after the program, `sh`) that run the image's
    /// `binary` with `args`.
    pub fn command(&self, binary: &str, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            "-c".to_string(),
            ENTER.to_string(),
            "ferry-image".into(),
            self.rootfs.display().to_string(),
            self.work.display().to_string(),
            format!("{BIN}/{binary}"),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }
}
