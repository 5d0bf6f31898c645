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

/// Enters the image: `$1` the root filesystem, `$2` the work folder to
/// mount at its own path (empty: none), `$3` `ro` for a read-only root,
/// `$4` the capability bounding set for setpriv (empty: unchanged), `$5`
/// `uid:gid`, `$6` how many mounts follow as `source target ro|rw`
/// triples (the target already resolved inside the root: [`Image::inside`]),
/// then the command. `/proc`, `/sys` (the namespace's), `/dev` and the namespace's
/// `/etc/resolv.conf` and `/etc/hosts` are always there, as a container
/// runtime provides them.
const ENTER: &str = r#"set -e
root=$1 work=$2 ro=$3 caps=$4 user=$5 n=$6
shift 6
if [ "$ro" = ro ]; then
  mount --bind "$root" "$root"
  mount -o remount,bind,ro "$root"
fi
mount -t proc proc "$root/proc"
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
mount --bind /etc/hosts "$root/etc/hosts"
if [ -n "$work" ]; then mount --bind "$work" "$root$work"; fi
while [ "$n" -gt 0 ]; do
  mount --bind "$1" "$2"
  if [ "$3" = ro ]; then mount -o remount,bind,ro "$2"; fi
  shift 3
  n=$((n - 1))
done
if [ -z "$caps" ] && [ "$user" = 0:0 ]; then
  exec chroot "$root" "$@"
fi
exec chroot "$root" setpriv ${caps:+--bounding-set="$caps" --inh-caps="$caps"} \
  --reuid="${user%%:*}" --regid="${user##*:}" --clear-groups -- "$@"
"#;

/// A container as a pod spec runs it, for [`Image::container`].
#[derive(Debug, Clone, Default)]
pub struct Container {
    /// The command and its arguments (`$(VAR)` references expanded).
    pub argv: Vec<String>,
    /// Environment variables (added to the lab's own).
    pub env: Vec<(String, String)>,
    /// Volume mounts: a host path, where it appears, read-only or not.
    pub mounts: Vec<Mount>,
    /// `runAsUser`, `runAsGroup`.
    pub user: (u32, u32),
    /// `readOnlyRootFilesystem`.
    pub read_only_root: bool,
    /// The capabilities kept (`capabilities.add` after `drop: [ALL]`),
    /// as setpriv names them (`net_admin`); `None`: unchanged.
    pub capabilities: Option<Vec<String>>,
}

/// One volume mount of a [`Container`].
#[derive(Debug, Clone)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

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
        for dir in [
            inside.as_path(),
            &rootfs.join("proc"),
            &rootfs.join("sys"),
            &rootfs.join("dev"),
        ] {
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
    /// `binary` with `args`, as root, with the lab's work folder.
    pub fn command(&self, binary: &str, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            "-c".to_string(),
            ENTER.to_string(),
            "ferry-image".into(),
            self.rootfs.display().to_string(),
            self.work.display().to_string(),
            "rw".into(),
            String::new(),
            "0:0".into(),
            "0".into(),
            format!("{BIN}/{binary}"),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    /// Where `path` (absolute, as the container sees it) is on the
    /// machine: symbolic links are followed inside the image's root, the
    /// way a container runtime resolves mount points (`/var/run` is a link
    /// to `/run`; followed from the machine's root it would leave the
    /// image). Components that do not exist yet are taken as they are.
    pub fn inside(&self, path: &str) -> anyhow::Result<PathBuf> {
        let mut resolved = self.rootfs.clone();
        let mut pending: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut links = 0;
        while let Some(component) = pending.pop() {
            match component.as_str() {
                "." => continue,
                ".." => {
                    if resolved != self.rootfs {
                        resolved.pop();
                    }
                    continue;
                }
                _ => {}
            }
            let next = resolved.join(&component);
            match std::fs::read_link(&next) {
                Ok(target) => {
                    links += 1;
                    if links > 40 {
                        bail!("{path}: too many symbolic links in the image");
                    }
                    let target = target.to_string_lossy().to_string();
                    if target.starts_with('/') {
                        resolved = self.rootfs.clone();
                    }
                    pending.extend(
                        target
                            .split('/')
                            .filter(|c| !c.is_empty())
                            .rev()
                            .map(str::to_string),
                    );
                }
                Err(_) => resolved = next,
            }
        }
        Ok(resolved)
    }

    /// The arguments (after `env K=V... sh`) that run `container` as its
    /// pod spec would: its mounts and nothing else of the lab's, its user,
    /// capabilities and read-only root. Mount points missing in the image
    /// are made first (as a container runtime does).
    pub fn container(&self, container: &Container) -> anyhow::Result<Vec<String>> {
        let mut targets = Vec::new();
        for mount in &container.mounts {
            let target = self.inside(&mount.target)?;
            targets.push(target.clone());
            if mount.source.is_dir() {
                std::fs::create_dir_all(&target)
            } else {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if target.exists() {
                    Ok(())
                } else {
                    std::fs::write(&target, "")
                }
            }
            .with_context(|| format!("making the mount point {}", target.display()))?;
        }
        let mut all = vec![
            "-c".to_string(),
            ENTER.to_string(),
            "ferry-image".into(),
            self.rootfs.display().to_string(),
            String::new(),
            if container.read_only_root { "ro" } else { "rw" }.into(),
            container
                .capabilities
                .as_ref()
                .map(|caps| {
                    std::iter::once("-all".to_string())
                        .chain(caps.iter().map(|c| format!("+{c}")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
            format!("{}:{}", container.user.0, container.user.1),
            container.mounts.len().to_string(),
        ];
        for (mount, target) in container.mounts.iter().zip(&targets) {
            all.push(mount.source.display().to_string());
            all.push(target.display().to_string());
            all.push(if mount.read_only { "ro" } else { "rw" }.into());
        }
        all.extend(container.argv.iter().cloned());
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_resolve_inside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("run")).unwrap();
        std::fs::create_dir_all(rootfs.join("usr/lib")).unwrap();
        std::fs::create_dir_all(rootfs.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", rootfs.join("var/run")).unwrap();
        std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
        let image = Image {
            rootfs: rootfs.clone(),
            work: dir.path().to_path_buf(),
        };
        // An absolute link is followed from the image's root, not the machine's.
        assert_eq!(
            image.inside("/var/run/ferry/token").unwrap(),
            rootfs.join("run/ferry/token")
        );
        assert_eq!(image.inside("/lib/x").unwrap(), rootfs.join("usr/lib/x"));
        // `..` never leaves the root.
        assert_eq!(image.inside("/../../etc").unwrap(), rootfs.join("etc"));
    }
}
