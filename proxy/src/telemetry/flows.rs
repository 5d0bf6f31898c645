//! The flow log: the last connections this proxy carried or refused, for
//! `ferryctl flows` (admin `/flows?since=SEQ`), like Hubble's ring of
//! flows.
//!
//! A fixed ring of slots, written without a lock: a connection takes the
//! next sequence number (one atomic add) and stores its flow in that
//! number's slot (one atomic pointer swap), overwriting the oldest. A
//! reader copies the slots newer than its cursor; nothing a reader does
//! can slow a writer, and a slow reader just finds that flows it had not
//! read were overwritten (it is told how many). `--flow-history 0` turns
//! the log off (then recording costs one branch).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde::Serialize;

/// Where a side of a flow was: a socket address (kept as it is: no
/// allocation per connection), or a name the proxy did not resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowAddress {
    Socket(std::net::SocketAddr),
    Name(String),
}

impl Serialize for FlowAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FlowAddress::Socket(addr) => serializer.collect_str(addr),
            FlowAddress::Name(name) => serializer.serialize_str(name),
        }
    }
}

/// One side of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowPeer {
    /// The address as the proxy saw it (a name for an unresolved target).
    pub address: FlowAddress,
    /// The workload telemetry names (empty: not a known pod).
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    /// The SPIFFE identity (empty outside the mesh).
    pub identity: Arc<str>,
}

/// What became of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Carried (whatever its outcome).
    Allowed,
    /// Refused by NetworkPolicy (here or at the destination's proxy).
    Denied,
    /// Failed before carrying data for another reason.
    Failed,
}

/// One connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flow {
    /// Its place in this proxy's log.
    pub seq: u64,
    /// When it ended (or failed).
    pub time_unix_ms: u64,
    /// `source` (the client's proxy) or `destination` (the server's).
    pub reporter: &'static str,
    pub verdict: Verdict,
    /// How it ended (`completed`, `aborted`...) or why it failed
    /// (`policy_denied`, `no_endpoints`...).
    pub outcome: &'static str,
    /// How it was carried (`hbone`, `direct`, `passthrough`,
    /// `plaintext`); absent for a connection that failed first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    pub source: FlowPeer,
    pub destination: FlowPeer,
    /// The service's host name (empty: not through a service).
    pub service: Arc<str>,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub duration_ms: u64,
    /// Why it failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The ring.
#[derive(Debug)]
pub struct FlowLog {
    slots: Box<[ArcSwapOption<Flow>]>,
    /// The next sequence number (the first flow is 1).
    next: AtomicU64,
    /// Names this process's numbering: a reader whose cursor came from
    /// another (the proxy restarted) starts over.
    epoch: u64,
}

/// What a reader gets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowPage {
    /// This process's numbering ([`FlowLog`]): when it changes, the
    /// reader's cursor means nothing here.
    pub epoch: u64,
    /// Ask again with `since` = this to get what follows.
    pub next: u64,
    /// Flows after the reader's cursor that were overwritten before it
    /// read them.
    pub lost: u64,
    pub flows: Vec<Arc<Flow>>,
}

impl FlowLog {
    /// A log of the last `capacity` flows (0: off).
    pub fn new(capacity: usize) -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            slots: (0..capacity).map(|_| ArcSwapOption::empty()).collect(),
            next: AtomicU64::new(1),
            epoch,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.slots.is_empty()
    }

    fn slot(&self, seq: u64) -> &ArcSwapOption<Flow> {
        &self.slots[(seq % self.slots.len() as u64) as usize]
    }

    /// Records a flow (built only when the log is on); `build` is given
    /// its sequence number.
    pub fn record(&self, build: impl FnOnce(u64) -> Flow) {
        if self.slots.is_empty() {
            return;
        }
        let seq = self.next.fetch_add(1, Ordering::AcqRel);
        self.store(Arc::new(build(seq)));
    }

    /// Puts a flow in its slot. A writer a whole ring ahead may have
    /// stored first: an older flow never replaces a newer one.
    fn store(&self, flow: Arc<Flow>) {
        let seq = flow.seq;
        self.slot(seq).rcu(|current| match current {
            Some(newer) if newer.seq > seq => Some(newer.clone()),
            _ => Some(flow.clone()),
        });
    }

    /// The flows after `since`, oldest first, at most `limit`: ask again
    /// from the page's `next` for the rest. A flow whose number is taken
    /// but not yet stored ends the page before it (the next read gets
    /// it); one overwritten before it was read is counted in `lost`.
    pub fn since(&self, since: u64, limit: usize) -> FlowPage {
        let next = self.next.load(Ordering::Acquire);
        let newest = next.saturating_sub(1);
        // A cursor from another numbering (a restarted proxy): start over.
        let since = if since > newest { 0 } else { since };
        let capacity = self.slots.len() as u64;
        // Numbers below this were overwritten already.
        let oldest = newest.saturating_sub(capacity.saturating_sub(1)).max(1);
        let start = (since + 1).max(oldest);
        let mut lost = start - (since + 1);
        let mut cursor = start - 1;
        let mut flows = Vec::new();
        if capacity > 0 {
            for seq in start..=newest {
                if flows.len() >= limit {
                    break;
                }
                match self.slot(seq).load_full() {
                    Some(flow) if flow.seq == seq => flows.push(flow),
                    Some(flow) if flow.seq > seq => lost += 1,
                    // Still being written.
                    _ => break,
                }
                cursor = seq;
            }
        }
        FlowPage {
            epoch: self.epoch,
            next: cursor,
            lost,
            flows,
        }
    }
}

/// A peer as flows show it.
pub fn peer(
    address: FlowAddress,
    workload: &Arc<str>,
    namespace: &Arc<str>,
    identity: &Arc<str>,
) -> FlowPeer {
    FlowPeer {
        address,
        workload: workload.clone(),
        namespace: namespace.clone(),
        identity: identity.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(seq: u64) -> Flow {
        let empty: Arc<str> = Arc::from("");
        Flow {
            seq,
            time_unix_ms: seq,
            reporter: "source",
            verdict: Verdict::Allowed,
            outcome: "completed",
            mode: Some("hbone"),
            source: peer(
                FlowAddress::Socket("10.0.0.1:1".parse().unwrap()),
                &empty,
                &empty,
                &empty,
            ),
            destination: peer(FlowAddress::Name("web.shop".into()), &empty, &empty, &empty),
            service: empty,
            sent_bytes: 1,
            received_bytes: 2,
            duration_ms: 3,
            detail: None,
        }
    }

    fn seqs(page: &FlowPage) -> Vec<u64> {
        page.flows.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn readers_get_what_follows_their_cursor_and_are_told_what_was_overwritten() {
        let log = FlowLog::new(4);
        let empty = log.since(0, 100);
        assert_eq!((empty.next, empty.lost, empty.flows.len()), (0, 0, 0));
        for _ in 0..3 {
            log.record(flow);
        }
        let page = log.since(0, 100);
        assert_eq!(seqs(&page), [1, 2, 3]);
        assert_eq!((page.next, page.lost), (3, 0));
        // Six more: the ring holds the last four (6..=9).
        for _ in 0..6 {
            log.record(flow);
        }
        let page = log.since(3, 100);
        assert_eq!(seqs(&page), [6, 7, 8, 9]);
        assert_eq!((page.next, page.lost), (9, 2));
        let json = serde_json::to_value(&page.flows[0]).unwrap();
        assert_eq!(json["source"]["address"], "10.0.0.1:1");
        assert_eq!(json["destination"]["address"], "web.shop");
        assert_eq!(seqs(&log.since(7, 100)), [8, 9]);
        // A limit pages from the oldest: nothing is skipped.
        let first = log.since(5, 2);
        assert_eq!((seqs(&first), first.next), (vec![6, 7], 7));
        let rest = log.since(first.next, 2);
        assert_eq!((seqs(&rest), rest.next, rest.lost), (vec![8, 9], 9, 0));
        let caught_up = log.since(9, 100);
        assert_eq!(
            (caught_up.next, caught_up.lost, caught_up.flows.len()),
            (9, 0, 0)
        );
        // A cursor from a previous process's numbering starts over.
        let restarted = log.since(500, 100);
        assert_eq!(seqs(&restarted), [6, 7, 8, 9]);
        assert_eq!(restarted.epoch, log.epoch);
    }

    #[test]
    fn a_flow_being_written_ends_the_page_and_an_older_one_never_replaces_a_newer() {
        let log = FlowLog::new(4);
        log.record(flow);
        // Number 2 is taken, not yet stored; number 3 is stored.
        log.next.store(4, Ordering::Release);
        log.store(Arc::new(flow(3)));
        let page = log.since(0, 100);
        assert_eq!((seqs(&page), page.next, page.lost), (vec![1], 1, 0));
        log.store(Arc::new(flow(2)));
        assert_eq!(seqs(&log.since(page.next, 100)), [2, 3]);
        // Number 9 lands in 1's slot; a late writer of 5 (same slot) loses.
        log.next.store(10, Ordering::Release);
        log.store(Arc::new(flow(9)));
        log.store(Arc::new(flow(5)));
        assert_eq!(log.slot(9).load_full().map(|f| f.seq), Some(9));
    }

    #[test]
    fn an_empty_log_records_nothing_and_builds_nothing() {
        let log = FlowLog::new(0);
        assert!(!log.enabled());
        log.record(|_| unreachable!("built while off"));
        assert_eq!(log.since(0, 10).flows.len(), 0);
    }
}
