//! The framing helpers on arbitrary bytes and maximum sizes: `Lines`,
//! `Frames` and `LineBuffer` never panic, never consume more than they were
//! given, never yield a line or frame longer than the maximum, and
//! `LineBuffer` fed in pieces agrees with `Lines` on the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netloop::{FrameCodec, FrameError, LineBuffer, LineCodec};

/// A maximum from one byte: small ones (where the edge cases are) and the
/// extremes.
fn max_from(b: u8) -> usize {
    match b {
        250 => usize::MAX,
        251 => usize::MAX - 1,
        252 => u32::MAX as usize,
        253 => 1 << 20,
        n => usize::from(n % 70),
    }
}

fuzz_target!(|input: &[u8]| {
    let [a, b, piece, data @ ..] = input else {
        return;
    };
    let (line_max, frame_max) = (max_from(*a), max_from(*b));
    let piece = usize::from(*piece).max(1);

    // Lines over the whole input.
    let mut lines = LineCodec::new(line_max).lines(data);
    let mut whole = Vec::new();
    let mut line_error = false;
    for line in &mut lines {
        match line {
            Ok(l) => {
                assert!(l.len() <= line_max, "line of {} > {line_max}", l.len());
                assert!(!l.contains(&b'\n'));
                whole.push(l.to_vec());
            }
            Err(FrameError::TooLong { max }) => {
                assert_eq!(max, line_max);
                line_error = true;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(lines.next(), None, "fused");
    let used = lines.consumed();
    assert!(used <= data.len());
    assert_eq!(
        data[..used].iter().filter(|&&b| b == b'\n').count(),
        whole.len(),
        "consumed exactly the lines yielded"
    );
    assert!(used == 0 || data[used - 1] == b'\n');
    if !line_error {
        // What is left is an incomplete line that could still fit.
        let rest = &data[used..];
        assert!(!rest.contains(&b'\n'));
        assert!(rest.len() <= line_max.saturating_add(1));
    }

    // LineBuffer fed in pieces of `piece` bytes.
    let mut buf = LineBuffer::new(line_max);
    let mut pieced = Vec::new();
    let mut buf_error = false;
    for chunk in data.chunks(piece) {
        if buf.push(chunk).is_err() {
            buf_error = true;
        }
        while let Some(l) = buf.pop_line() {
            assert!(
                l.len() <= line_max,
                "buffered line of {} > {line_max}",
                l.len()
            );
            assert!(!l.contains(&b'\n'));
            pieced.push(l.to_vec());
        }
    }
    if !line_error && !buf_error {
        assert_eq!(pieced, whole, "LineBuffer and Lines disagree");
    }
    if line_error {
        assert!(buf_error, "Lines saw an over-long line, LineBuffer did not");
    }

    // Frames over the whole input.
    let mut frames = FrameCodec::new(frame_max).frames(data);
    let mut total = 0usize;
    for frame in &mut frames {
        match frame {
            Ok(f) => {
                assert!(f.len() <= frame_max, "frame of {} > {frame_max}", f.len());
                total += 4 + f.len();
            }
            Err(FrameError::TooLong { max }) => assert_eq!(max, frame_max),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(frames.next(), None, "fused");
    assert_eq!(frames.consumed(), total);
    assert!(frames.consumed() <= data.len());
});
