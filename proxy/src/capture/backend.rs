//! Which iptables the host uses. A node has two kernel interfaces for the
//! same rules: nf_tables (`iptables-nft`, Debian 11 and later, RHEL 8 and
//! later) and the legacy xtables (`iptables-legacy`). Rules written through
//! the other one are invisible to the host's tools and, worse, run in a
//! different order relative to kube-proxy's and the CNI's. The image ships
//! both; [`Backend::resolve`] picks the one the host already uses, the
//! same way Kubernetes' own images decide (the `iptables-wrapper` rule,
//! [`ferry_core::iptables::choose`], which `ferryctl check --pre-install`
//! reports too).
//!
//! `--iptables-backend nft|legacy` overrides the choice.

use std::process::{Command, Stdio};

/// Which iptables binaries are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Detect it from the host's rules at start.
    Auto,
    /// `iptables-nft` and friends.
    Nft,
    /// `iptables-legacy` and friends.
    Legacy,
    /// Plain `iptables` (whatever the host's alternatives point at): used
    /// where neither suffixed binary exists.
    #[value(skip)]
    Default,
}

impl Backend {
    /// The suffix of this backend's binaries (`iptables{suffix}`).
    pub fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Auto | Backend::Default => "",
        }
    }

    /// Resolves [`Backend::Auto`] by looking at the host; the other values
    /// are returned as they are.
    pub fn resolve(self) -> Backend {
        if self != Backend::Auto {
            return self;
        }
        let nft = save("iptables-nft-save");
        let legacy = save("iptables-legacy-save");
        let chosen = match (&nft, &legacy) {
            (Some(nft), Some(legacy)) => {
                let nft6 = save("ip6tables-nft-save").unwrap_or_default();
                let legacy6 = save("ip6tables-legacy-save").unwrap_or_default();
                match ferry_core::iptables::choose(&[nft, &nft6], &[legacy, &legacy6]).backend {
                    ferry_core::iptables::Backend::Nft => Backend::Nft,
                    ferry_core::iptables::Backend::Legacy => Backend::Legacy,
                }
            }
            (Some(_), None) => Backend::Nft,
            (None, Some(_)) => Backend::Legacy,
            (None, None) => Backend::Default,
        };
        tracing::info!(backend = ?chosen, "iptables backend detected");
        chosen
    }
}

/// The rules of a backend (`*-save` output), or `None` when its binary is
/// missing or fails.
fn save(program: &str) -> Option<String> {
    let out = Command::new(program)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_backends_are_kept() {
        assert_eq!(Backend::Legacy.resolve(), Backend::Legacy);
        assert_eq!(Backend::Nft.resolve(), Backend::Nft);
        assert_eq!(Backend::Legacy.suffix(), "-legacy");
        assert_eq!(Backend::Default.suffix(), "");
    }
}
