//! The HBONE listener's first check of a stream: method, target (`:authority`)
//! and the `forwarded` header, from arbitrary bytes (split at 0xFF).
#![no_main]

use ferry_proxy::hbone::server::connect_target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xff);
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let forwarded = parts.next().unwrap_or_default();
    let Ok(method) = http::Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(uri) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_bytes(forwarded) {
        headers.insert("forwarded", value);
    }
    if let Ok((target, _)) = connect_target(&method, &uri, &headers) {
        // What was accepted names a socket address, written back as given.
        assert_eq!(
            uri.authority().map(|a| a.as_str().parse().ok()),
            Some(Some(target))
        );
    }
});
