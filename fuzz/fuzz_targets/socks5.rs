//! SOCKS5: the greeting and CONNECT request of a client, read from
//! arbitrary bytes (what `read_destination` answers is written to a
//! buffer). It must return a destination or an error, never panic or hang.
#![no_main]

use ferry_proxy::outbound::socks5::read_destination;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut stream = tokio::io::join(data, Vec::<u8>::new());
    let _ = futures::executor::block_on(read_destination(&mut stream));
});
