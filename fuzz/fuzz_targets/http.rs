// cargo +nightly fuzz run http -- -max_total_time=60
//
// The http example's request parser and responder on arbitrary bytes, fed in
// pieces the way the event loop offers them: no panic, never consuming past
// the input, and the same responses whatever the split (`100 Continue`
// aside: it is sent only while a body is still missing).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../examples/http/proto.rs"]
mod proto;

use proto::{serve, Conn, Limits, CONTINUE};

/// Small limits, so the limit checks are reached by short inputs.
const LIMITS: Limits = Limits {
    max_head: 256,
    max_headers: 8,
    max_body: 512,
};

const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// Serves `data` arriving in reads of the sizes `cuts` gives; returns the
/// responses (without interim ones), whether the connection closed, and
/// how many bytes were left unconsumed.
fn run(data: &[u8], cuts: &[u8]) -> (Vec<u8>, bool, usize) {
    let mut conn = Conn::default();
    let mut out = Vec::new();
    let mut buffer = Vec::new();
    let (mut rest, mut cuts) = (data, cuts.iter());
    loop {
        let n = cuts
            .next()
            .map_or(rest.len(), |&c| usize::from(c))
            .min(rest.len());
        buffer.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let before = out.len();
        let o = serve(&buffer, &mut conn, &LIMITS, DATE, &mut out);
        assert!(o.consumed <= buffer.len(), "consumed past the input");
        assert!(!o.close || o.consumed == buffer.len());
        assert_eq!(o.partial, !o.close && o.consumed < buffer.len());
        assert!(o.responses > 0 || out.len() == before || o.continued);
        if o.continued {
            assert!(out.ends_with(CONTINUE));
            out.truncate(out.len() - CONTINUE.len());
        }
        buffer.drain(..o.consumed);
        if o.close {
            return (out, true, 0);
        }
        if rest.is_empty() {
            return (out, false, buffer.len());
        }
    }
}

fuzz_target!(|input: &[u8]| {
    // The first byte says how many of the next bytes are read sizes.
    let (cuts, data) = match input.split_first() {
        Some((&k, rest)) => rest.split_at(usize::from(k % 16).min(rest.len())),
        None => (&[][..], input),
    };
    let whole = run(data, &[]);
    let split = run(data, cuts);
    assert_eq!(whole, split, "the split of the input changed the outcome");
});
