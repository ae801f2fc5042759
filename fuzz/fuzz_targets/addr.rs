//! `Endpoint::parse` on arbitrary UTF-8: never panics, and what parses
//! prints (Display) as a string that parses again to the same endpoint.
//!
//! Host names that would go to the system resolver are skipped: resolving
//! them is slow, may touch the network, and is not this crate's code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netloop::Endpoint;

/// True if parsing `s` would ask the system resolver (a TCP/UDP address
/// whose host is a plausible name rather than an IP literal).
fn would_resolve(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("tcp://")
        .or_else(|| s.strip_prefix("udp://"))
    else {
        return false;
    };
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && host.parse::<std::net::IpAddr>().is_err()
}

fuzz_target!(|s: &str| {
    if would_resolve(s) {
        return;
    }
    match Endpoint::parse(s) {
        Ok(e) => {
            let shown = e.to_string();
            let again = Endpoint::parse(&shown)
                .unwrap_or_else(|err| panic!("{s:?} parsed, its Display {shown:?} did not: {err}"));
            assert_eq!(again.transport, e.transport, "{s:?} -> {shown:?}");
            assert_eq!(again, e, "{s:?} -> {shown:?}");
        }
        Err(err) => {
            // The message names the input.
            let msg = err.to_string();
            assert!(msg.contains(&format!("{s:?}")), "{s:?}: {msg}");
        }
    }
});
