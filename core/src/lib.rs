//! Ferry's IO-free core: what a node proxy knows and decides, with no
//! sockets and no runtime. Decisions take the time from the caller
//! (`now`); the only clock read is the store stamping each applied delta
//! with the wall-clock time, for `/config_dump`.
//!
//! - [`state`]: the configuration store ([`state::ConfigStore`]) and the
//!   immutable snapshot every connection reads ([`state::ProxyState`]),
//!   with its indexes (workload by IP, service by IP and node port, the
//!   workloads of a node, the policies selecting a workload).
//! - [`route`]: kube-proxy's rules: what a destination means, which
//!   endpoints may serve it ([`route::endpoints`]), which one does
//!   ([`route::lb`]), how it is carried, and `ferryctl route`'s view of
//!   all of that ([`route::explain()`]).
//! - [`policy`]: NetworkPolicy evaluation, a leaf that imports no state.
//! - [`request`]: the decision for one outbound connection, assembled from
//!   the three above: what, where, how, as whom, allowed or why not.
//! - [`arrival`]: its twin for an inbound connection (over an HBONE tunnel
//!   or in plaintext): who the source is, and whether it may be delivered.
//! - [`iptables`]: which iptables backend a node uses, from what each
//!   holds (the proxy's `--iptables-backend auto`, `ferryctl check
//!   --pre-install`).
//!
//! Shared by `ferry-proxy` (the data path) and `ferryctl` (explanations),
//! so what ferryctl says is what the proxy does.

pub mod arrival;
pub mod iptables;
pub mod policy;
pub mod request;
pub mod route;
pub mod state;
pub(crate) mod table;
