//! Which iptables backend a node uses, decided from what each holds, by
//! the rule of Kubernetes' `iptables-wrapper`:
//! 1. the kubelet's and kube-proxy's marker chains (`KUBE-IPTABLES-HINT`,
//!    `KUBE-KUBELET-CANARY`) name it;
//! 2. otherwise the backend holding more rules wins, nf_tables on a tie.
//!
//! The proxy follows it (`--iptables-backend auto`), and
//! `ferryctl check --pre-install` reports it; the callers run the
//! `*-save` programs.

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft` and friends.
    Nft,
    /// `iptables-legacy` and friends.
    Legacy,
}

/// The decision and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub backend: Backend,
    pub reason: &'static str,
}

/// The marker chains the kubelet and kube-proxy create in the backend
/// they use.
const HINT_CHAINS: [&str; 2] = [":KUBE-IPTABLES-HINT ", ":KUBE-KUBELET-CANARY "];

/// Rules (`-A` lines) in `*-save` outputs.
pub fn rules(saves: &[&str]) -> usize {
    saves
        .iter()
        .flat_map(|s| s.lines())
        .filter(|l| l.starts_with("-A "))
        .count()
}

/// The decision, from the `*-save` outputs of each backend (IPv4 and
/// IPv6).
pub fn choose(nft: &[&str], legacy: &[&str]) -> Choice {
    let hinted = |saves: &[&str]| {
        saves
            .iter()
            .flat_map(|s| s.lines())
            .any(|l| HINT_CHAINS.iter().any(|h| l.starts_with(h)))
    };
    if hinted(nft) {
        return Choice {
            backend: Backend::Nft,
            reason: "the kubelet's marker chain is in nf_tables",
        };
    }
    if hinted(legacy) {
        return Choice {
            backend: Backend::Legacy,
            reason: "the kubelet's marker chain is in legacy iptables",
        };
    }
    if rules(legacy) > rules(nft) {
        Choice {
            backend: Backend::Legacy,
            reason: "no marker chain; legacy iptables holds more rules",
        }
    } else {
        Choice {
            backend: Backend::Nft,
            reason: "no marker chain; nf_tables holds as many rules or more",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE_LEGACY: &str = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n*nat\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n";
    const BUSY: &str =
        "*filter\n-A INPUT -j ACCEPT\n-A FORWARD -j ACCEPT\n-A OUTPUT -j ACCEPT\nCOMMIT\n";
    const ONE_RULE: &str = "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n";

    fn backend(nft: &[&str], legacy: &[&str]) -> Backend {
        choose(nft, legacy).backend
    }

    #[test]
    fn the_kubelets_hint_chain_names_the_backend() {
        // Even when the other backend holds more rules.
        assert_eq!(backend(&[BUSY], &[KUBE_LEGACY]), Backend::Legacy);
        let kube_nft = KUBE_LEGACY.replace("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY");
        assert_eq!(backend(&[&kube_nft], &[BUSY]), Backend::Nft);
        // A hint in the IPv6 tables counts too.
        assert_eq!(backend(&[BUSY, ""], &["", KUBE_LEGACY]), Backend::Legacy);
    }

    #[test]
    fn without_a_hint_the_backend_with_more_rules_wins_and_a_tie_is_nft() {
        assert_eq!(backend(&[ONE_RULE], &[BUSY]), Backend::Legacy);
        assert_eq!(backend(&[BUSY], &[ONE_RULE]), Backend::Nft);
        assert_eq!(backend(&[""], &[""]), Backend::Nft);
        assert_eq!(backend(&[ONE_RULE], &[ONE_RULE]), Backend::Nft);
        // A chain declaration or a policy line is not a rule.
        assert_eq!(
            backend(
                &["*nat\n:FOO - [0:0]\n"],
                &["*nat\n:A - [0:0]\n:B - [0:0]\n"]
            ),
            Backend::Nft
        );
        assert_eq!(rules(&[BUSY, ONE_RULE]), 4);
    }
}
