//! The delta protocol at the proxy: arbitrary bytes as a `DeltaResponse`
//! applied to a store holding the example cluster. Resources that do not
//! convert are refused one by one (the rest applies); afterwards the state
//! must still answer lookups and decide connections.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use ferry_core::route::LoadBalancer;
use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(response) = ferry_api::proto::DeltaResponse::decode(data) else {
        return;
    };
    let store = ferry_fuzz::example_store();
    let _ = store.apply(response);
    let state = store.snapshot();
    let lb = LoadBalancer::new();
    let client: SocketAddr = ([10, 244, 1, 10], 40000).into();
    for destination in [
        SocketAddr::from(([10, 96, 0, 10], 80)),
        SocketAddr::from(([10, 244, 2, 11], 8080)),
        SocketAddr::from(([192, 0, 2, 1], 443)),
    ] {
        let _ =
            ferry_core::request::decide(&state, &lb, "node-a", client, destination, Instant::now());
    }
    let _ = state.versions();
});
