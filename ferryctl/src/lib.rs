//! `ferryctl`'s library: the local lab ([`lab`]), which the `ferryctl lab`
//! command runs and the end-to-end tests build on, and the state a proxy
//! would hold for a folder of manifests ([`mesh`]). The other commands live
//! in the binary (`main.rs`).

pub mod lab;
pub mod mesh;
