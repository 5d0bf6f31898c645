//! `ferryctl`'s library: the local lab ([`lab`]), which the `ferryctl lab`
//! command runs and the end-to-end tests build on, the state a proxy
//! would hold for a folder of manifests ([`mesh`]), and the commands on a
//! running mesh ([`live`]). The other commands live
//! in the binary (`main.rs`).

pub mod lab;
pub mod live;
pub mod mesh;
pub mod output;
