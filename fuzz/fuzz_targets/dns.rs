//! DNS: arbitrary bytes as a DNS message; every question it decodes to is
//! answered from the example cluster's state as the proxy's DNS server
//! would (service names, headless services, ExternalName chains, search
//! domains), and the bytes as a name go through the same resolution.
#![no_main]

use ferry_proxy::dns::answer;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let state = ferry_fuzz::example_state();
    if let Ok(message) = hickory_proto::op::Message::from_vec(data) {
        for question in &message.queries {
            let _ = answer(&state, question, "cluster.local", 5);
        }
    }
    let name = String::from_utf8_lossy(data);
    let _ = ferry_core::route::resolve_fqdn(&state, &name, "cluster.local");
});
