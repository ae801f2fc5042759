// cargo +nightly fuzz run resp -- -max_total_time=60
//
// The kv example's RESP2 parser and store on arbitrary bytes, fed in pieces
// the way the event loop offers them: no panic, no over-consumption, and the
// same commands whatever the split.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

#[path = "../../examples/kv/resp.rs"]
mod resp;
#[path = "../../examples/kv/store.rs"]
mod store;

use resp::{Limits, Parser, ProtocolError};
use store::{Session, Store};

/// Small limits, so the limit checks are reached by short inputs.
const LIMITS: Limits = Limits {
    max_multibulk_len: 64,
    max_bulk_len: 256,
    max_inline_len: 128,
};

/// Parses `data` arriving in reads of the sizes `cuts` gives, executing each
/// command; returns the replies and how it ended.
fn run(data: &[u8], cuts: &[u8]) -> (Vec<u8>, Result<usize, ProtocolError>) {
    let mut parser = Parser::new(LIMITS);
    let (mut store, mut session) = (Store::new(), Session::new());
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buffer = Vec::new();
    let (mut rest, mut cuts) = (data, cuts.iter());
    let mut total = 0; // Bytes consumed before `buffer`.
    loop {
        let n = cuts
            .next()
            .map_or(rest.len(), |&c| usize::from(c))
            .min(rest.len());
        buffer.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let mut consumed = 0;
        loop {
            match parser.parse(&buffer[consumed..]) {
                Ok(Some((cmd, used))) => {
                    assert!(used > 0 && consumed + used <= buffer.len());
                    consumed += used;
                    // Virtual time moves with the input, so expiry paths run.
                    let now = start + Duration::from_millis((total + consumed) as u64);
                    cmd.with_args(|args| store.execute(&mut session, args, now, &mut out));
                    store.sweep(now, 4);
                }
                Ok(None) => break,
                Err(e) => return (out, Err(e)),
            }
        }
        buffer.drain(..consumed);
        total += consumed;
        if rest.is_empty() {
            return (out, Ok(buffer.len()));
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
