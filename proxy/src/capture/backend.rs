//! Which iptables the host uses. A node has two kernel interfaces for the
//! same rules: nf_tables (`iptables-nft`, Debian 11 and later, RHEL 8 and
//! later) and the legacy xtables (`iptables-legacy`). Rules written through
//! the other one are invisible to the host's tools and, worse, run in a
//! different order relative to kube-proxy's and the CNI's. The image ships
//! both; [`Backend::detect`] picks the one the host already uses, the same
//! way Kubernetes' own images decide (the `iptables-wrapper` rule):
//!
//! 1. the kubelet's and kube-proxy's marker chains (`KUBE-IPTABLES-HINT`,
//!    `KUBE-KUBELET-CANARY`) in the mangle table name the backend;
//! 2. otherwise the backend holding more rules wins, nf_tables on a tie
//!    (an empty host: the kernel's preferred interface).
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

/// The marker chains the kubelet and kube-proxy create in the backend
/// they use.
const HINT_CHAINS: [&str; 2] = [":KUBE-IPTABLES-HINT ", ":KUBE-KUBELET-CANARY "];

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
                choose(&[nft, &nft6], &[legacy, &legacy6])
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

/// The decision, from the `*-save` outputs of each backend (IPv4 and IPv6).
fn choose(nft: &[&str], legacy: &[&str]) -> Backend {
    let hinted = |saves: &[&str]| {
        saves
            .iter()
            .flat_map(|s| s.lines())
            .any(|l| HINT_CHAINS.iter().any(|h| l.starts_with(h)))
    };
    if hinted(nft) {
        return Backend::Nft;
    }
    if hinted(legacy) {
        return Backend::Legacy;
    }
    let rules = |saves: &[&str]| {
        saves
            .iter()
            .flat_map(|s| s.lines())
            .filter(|l| l.starts_with("-A "))
            .count()
    };
    if rules(legacy) > rules(nft) {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE_LEGACY: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n*nat\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
    const BUSY: &str =
        "*filter\n-A INPUT -j ACCEPT\n-A FORWARD -j ACCEPT\n-A OUTPUT -j ACCEPT\nCOMMIT\n";
    const ONE_RULE: &str = "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n";

    #[test]
    fn the_kubelets_hint_chain_names_the_backend() {
        // Even when the other backend holds more rules.
        assert_eq!(choose(&[BUSY], &[KUBE_LEGACY]), Backend::Legacy);
        let kube_nft = KUBE_LEGACY.replace("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY");
        assert_eq!(choose(&[&kube_nft], &[BUSY]), Backend::Nft);
        // A hint in the IPv6 tables counts too.
        assert_eq!(choose(&[BUSY, ""], &["", KUBE_LEGACY]), Backend::Legacy);
    }

    #[test]
    fn without_a_hint_the_backend_with_more_rules_wins_and_a_tie_is_nft() {
        assert_eq!(choose(&[ONE_RULE], &[BUSY]), Backend::Legacy);
        assert_eq!(choose(&[BUSY], &[ONE_RULE]), Backend::Nft);
        assert_eq!(choose(&[""], &[""]), Backend::Nft);
        assert_eq!(choose(&[ONE_RULE], &[ONE_RULE]), Backend::Nft);
        // A chain declaration or a policy line is not a rule.
        assert_eq!(
            choose(
                &["*nat\n:FOO - [0:0]\n"],
                &["*nat\n:A - [0:0]\n:B - [0:0]\n"]
            ),
            Backend::Nft
        );
    }

    #[test]
    fn explicit_backends_are_kept() {
        assert_eq!(Backend::Legacy.resolve(), Backend::Legacy);
        assert_eq!(Backend::Nft.resolve(), Backend::Nft);
        assert_eq!(Backend::Legacy.suffix(), "-legacy");
        assert_eq!(Backend::Default.suffix(), "");
    }
}
