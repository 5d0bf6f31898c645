//! The routing that brings back the replies to connections the proxy
//! opened from its clients' addresses ([`crate::net::transparent`]).
//!
//! A server answers its client's address, which is not this node's: left
//! alone, the reply would be routed towards the client. So:
//!
//! - mangle `OUTPUT` (chain `FERRY_RETURN_OUT`): a packet carrying the
//!   proxy's socket mark (MARK) marks its connection with the reply mark
//!   (MARK + 1: the proxy's own packets must not match the policy rule
//!   below, or they would be delivered back to the proxy);
//! - mangle `PREROUTING` (chain `FERRY_RETURN_PRE`): a packet arriving on
//!   such a connection gets the reply mark;
//! - a policy rule sends packets with the reply mark to a table whose only
//!   route delivers everything locally (`ip rule add fwmark REPLY/MASK
//!   lookup TABLE`, `ip route replace local default dev lo table TABLE`),
//!   where the proxy's transparent socket takes them.
//!
//! The mark's bits (`--client-address-mark`, default 0x539/0xfff) must
//! not be used by the CNI or kube-proxy (kube-proxy uses 0x4000 and 0x8000).
//! Both families; installed at start (idempotent), removed by a proxy
//! stopped for good (a successor keeps them).

use std::fmt::Write as _;

use super::backend::Backend;
use super::rules::{CaptureError, Family};

const PRE: &str = "FERRY_RETURN_PRE";
const OUT: &str = "FERRY_RETURN_OUT";

/// The reply routing of one node.
#[derive(Debug, Clone)]
pub struct ReturnRouting {
    pub mark: u32,
    pub mask: u32,
    pub table: u32,
    pub backend: Backend,
    pub families: Vec<Family>,
}

/// `ip` with `args` (see [`run`]).
fn ip(args: &[String]) -> Result<bool, CaptureError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("ip", &args, None)
}

/// Runs `program` ([`super::rules::run`]); `false` when an `-C` check or
/// a `del` of something absent failed, which is not an error here.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<bool, CaptureError> {
    let tolerated = args.iter().any(|a| *a == "-C" || *a == "del");
    super::rules::run(program, args, stdin, tolerated).map(|out| out.is_some())
}

impl ReturnRouting {
    /// The mark the replies carry (and the policy rule matches).
    pub fn reply_mark(&self) -> u32 {
        self.mark + 1
    }

    /// The two mangle chains, as `iptables-restore --noflush` input.
    pub fn render(&self) -> String {
        let (mark, mask, reply) = (self.mark, self.mask, self.reply_mark());
        let mut out = String::from("*mangle\n");
        let _ = writeln!(out, ":{PRE} - [0:0]\n:{OUT} - [0:0]");
        let _ = writeln!(
            out,
            "-A {OUT} -m mark --mark {mark:#x}/{mask:#x} -j CONNMARK --set-xmark {reply:#x}/{mask:#x}"
        );
        let _ = writeln!(
            out,
            "-A {PRE} -m connmark --mark {reply:#x}/{mask:#x} -j MARK --set-xmark {reply:#x}/{mask:#x}"
        );
        out.push_str("COMMIT\n");
        out
    }

    /// `ip -4|-6 rule VERB fwmark REPLY/MASK lookup TABLE`.
    fn policy_rule(&self, family: Family, verb: &str) -> Vec<String> {
        let family = match family {
            Family::V4 => "-4",
            Family::V6 => "-6",
        };
        [family, "rule", verb, "fwmark"]
            .into_iter()
            .map(str::to_string)
            .chain([
                format!("{:#x}/{:#x}", self.reply_mark(), self.mask),
                "lookup".into(),
                self.table.to_string(),
            ])
            .collect()
    }

    /// `ip -4|-6 route VERB ... table TABLE`.
    fn table_route(&self, family: Family, verb: &[&str]) -> Vec<String> {
        let family = match family {
            Family::V4 => "-4",
            Family::V6 => "-6",
        };
        std::iter::once(family)
            .chain(["route"])
            .chain(verb.iter().copied())
            .map(str::to_string)
            .chain(["table".into(), self.table.to_string()])
            .collect()
    }

    /// Installs (or repairs) the chains, their jumps, the policy rule and
    /// the local route, for every family.
    pub fn install(&self) -> Result<(), CaptureError> {
        for family in &self.families {
            let iptables = family.tool_name(self.backend, "");
            run(
                &family.tool_name(self.backend, "-restore"),
                &["-w", "5", "--noflush"],
                Some(&self.render()),
            )?;
            for (hook, chain) in [("PREROUTING", PRE), ("OUTPUT", OUT)] {
                let rule = ["-w", "5", "-t", "mangle", "-C", hook, "-j", chain];
                if !run(&iptables, &rule, None)? {
                    run(
                        &iptables,
                        &["-w", "5", "-t", "mangle", "-I", hook, "-j", chain],
                        None,
                    )?;
                }
            }
            // One rule: copies of earlier runs go first.
            while ip(&self.policy_rule(*family, "del"))? {}
            ip(&self.policy_rule(*family, "add"))?;
            let any = match family {
                Family::V4 => "0.0.0.0/0",
                Family::V6 => "::/0",
            };
            ip(&self.table_route(*family, &["replace", "local", any, "dev", "lo"]))?;
        }
        tracing::info!(mark = format!("{:#x}/{:#x}", self.mark, self.mask), table = self.table, families = ?self.families, "client addresses kept: reply routing installed");
        Ok(())
    }

    /// Removes what [`ReturnRouting::install`] made (a proxy stopped for good).
    pub fn remove(&self) {
        for family in &self.families {
            let iptables = family.tool_name(self.backend, "");
            for (hook, chain) in [("PREROUTING", PRE), ("OUTPUT", OUT)] {
                while run(
                    &iptables,
                    &["-w", "5", "-t", "mangle", "-D", hook, "-j", chain],
                    None,
                )
                .unwrap_or(false)
                {}
                let _ = run(&iptables, &["-w", "5", "-t", "mangle", "-F", chain], None);
                let _ = run(&iptables, &["-w", "5", "-t", "mangle", "-X", chain], None);
            }
            while ip(&self.policy_rule(*family, "del")).unwrap_or(false) {}
            let _ = ip(&self.table_route(*family, &["flush"]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_saved_on_the_way_out_and_restored_on_the_replies() {
        let routing = ReturnRouting {
            mark: 0x539,
            mask: 0xfff,
            table: 133,
            backend: Backend::Default,
            families: vec![Family::V4],
        };
        assert_eq!(
            routing.render(),
            "*mangle\n:FERRY_RETURN_PRE - [0:0]\n:FERRY_RETURN_OUT - [0:0]\n\
-A FERRY_RETURN_OUT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x53a/0xfff\n\
-A FERRY_RETURN_PRE -m connmark --mark 0x53a/0xfff -j MARK --set-xmark 0x53a/0xfff\n\
COMMIT\n"
        );
        assert_eq!(
            routing.policy_rule(Family::V4, "add").join(" "),
            "-4 rule add fwmark 0x53a/0xfff lookup 133"
        );
        assert_eq!(
            routing
                .table_route(Family::V6, &["replace", "local", "::/0", "dev", "lo"])
                .join(" "),
            "-6 route replace local ::/0 dev lo table 133"
        );
    }
}
