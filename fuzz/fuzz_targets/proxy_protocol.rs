//! The PROXY protocol parser on arbitrary bytes and maximums: never panics,
//! never claims more bytes than it was given or than a header may have,
//! reports an error that more bytes would not change, and a header it
//! returns re-encodes (version 1 for TCP4/TCP6, version 2 for every family
//! with addresses) to bytes that parse to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netloop::proxy_protocol::{encode_proxy_v1, encode_proxy_v2, Parsed, ProxyHeader, ProxyParser, ProxyTransport, SocketKind};

/// A version 2 maximum from one byte: small ones (where the edge cases
/// are), the default, and no limit.
fn max_from(b: u8) -> usize {
    match b {
        254 => ProxyParser::DEFAULT_MAX,
        255 => usize::MAX,
        n => usize::from(n) * 2,
    }
}

/// Parses `wire` whole and returns the header; panics otherwise.
fn reparse(wire: &[u8]) -> ProxyHeader<'_> {
    match ProxyParser::with_max(usize::MAX).parse(wire) {
        Ok(Parsed::Done { header, len }) => {
            assert_eq!(len, wire.len(), "{wire:?}");
            header
        }
        other => panic!("{wire:?} does not parse: {other:?}"),
    }
}

/// Re-encodes `header` and checks that the result carries the same
/// addresses.
fn check_reencode(header: &ProxyHeader<'_>) {
    let (Some(src), Some(dst)) = (header.source(), header.destination()) else {
        return;
    };
    let mut wire = Vec::new();
    if matches!(
        header.transport(),
        ProxyTransport::Tcp4 | ProxyTransport::Tcp6
    ) {
        encode_proxy_v1(src, dst, &mut wire);
        assert!(wire.len() <= ProxyParser::V1_MAX);
        let again = reparse(&wire);
        assert_eq!(
            (again.source(), again.destination()),
            (Some(src), Some(dst))
        );
        assert_eq!(again.transport(), header.transport());
    }
    let kind = match header.transport() {
        ProxyTransport::Udp4 | ProxyTransport::Udp6 | ProxyTransport::UnixDgram => {
            SocketKind::Datagram
        }
        _ => SocketKind::Stream,
    };
    let tlvs: Vec<(u8, &[u8])> = header
        .tlvs()
        .filter(|&(kind, _)| kind != ProxyHeader::TLV_CRC32C)
        .collect();
    wire.clear();
    encode_proxy_v2(src, dst, kind, &tlvs, &mut wire)
        .unwrap_or_else(|e| panic!("{header:?} does not re-encode: {e}"));
    let again = reparse(&wire);
    assert_eq!(
        (again.source(), again.destination()),
        (Some(src), Some(dst))
    );
    assert_eq!(again.transport(), header.transport());
    assert!(again.tlvs().eq(tlvs.iter().copied()));
}

fn check(parser: ProxyParser, data: &[u8]) {
    match parser.parse(data) {
        Ok(Parsed::Incomplete) => {}
        Ok(Parsed::Done { header, len }) => {
            assert!(len <= data.len(), "len {len} > {}", data.len());
            let limit = match header.version() {
                1 => ProxyParser::V1_MAX,
                _ => parser.max().min(ProxyParser::V2_MAX),
            };
            assert!(len <= limit, "len {len} over {limit}");
            // The header alone is the same header; shorter is incomplete.
            assert_eq!(
                parser.parse(&data[..len]),
                Ok(Parsed::Done {
                    header: header.clone(),
                    len
                })
            );
            for k in [0, len / 2, len - 1] {
                assert_eq!(parser.parse(&data[..k]), Ok(Parsed::Incomplete), "{k}");
            }
            check_reencode(&header);
        }
        Err(e) => {
            // Errors are final: more bytes do not change them.
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n\0");
            assert_eq!(parser.parse(&more), Err(e));
            assert!(!e.to_string().is_empty());
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&m, data)) = input.split_first() else {
        return;
    };
    check(ProxyParser::with_max(max_from(m)), data);
    check(ProxyParser::new(), data);
});
