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
use std::process::{Command, Stdio};

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

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<bool, CaptureError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        pipe.write_all(input.as_bytes())
            .map_err(|source| CaptureError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(true);
    }
    // `-C` of an absent rule, `rule del` of an absent rule: not errors.
    if args.iter().any(|a| *a == "-C" || *a == "del") {
        return Ok(false);
    }
    Err(CaptureError::Failed {
        command,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
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

    fn family_args(family: Family) -> &'static [&'static str] {
        match family {
            Family::V4 => &["-4"],
            Family::V6 => &["-6"],
        }
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
            let fwmark = format!("{:#x}/{:#x}", self.reply_mark(), self.mask);
            let table = self.table.to_string();
            let f = Self::family_args(*family);
            // One rule: copies of earlier runs go first.
            let del: Vec<&str> = f
                .iter()
                .copied()
                .chain(["rule", "del", "fwmark", &fwmark, "lookup", &table])
                .collect();
            while run("ip", &del, None)? {}
            let add: Vec<&str> = f
                .iter()
                .copied()
                .chain(["rule", "add", "fwmark", &fwmark, "lookup", &table])
                .collect();
            run("ip", &add, None)?;
            let any = match family {
                Family::V4 => "0.0.0.0/0",
                Family::V6 => "::/0",
            };
            let route: Vec<&str> = f
                .iter()
                .copied()
                .chain([
                    "route", "replace", "local", any, "dev", "lo", "table", &table,
                ])
                .collect();
            run("ip", &route, None)?;
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
            let fwmark = format!("{:#x}/{:#x}", self.reply_mark(), self.mask);
            let table = self.table.to_string();
            let f = Self::family_args(*family);
            let del: Vec<&str> = f
                .iter()
                .copied()
                .chain(["rule", "del", "fwmark", &fwmark, "lookup", &table])
                .collect();
            while run("ip", &del, None).unwrap_or(false) {}
            let flush: Vec<&str> = f
                .iter()
                .copied()
                .chain(["route", "flush", "table", &table])
                .collect();
            let _ = run("ip", &flush, None);
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
    }
}
