//! The example command lines on bad input: each exits non-zero at once
//! with a message naming the input, never a panic; `--help` works for every
//! example. The examples are built by the first test that runs one
//! ([`example_binary`]), so `cargo test --test cli` works alone.

mod util;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use util::*;

/// The examples this crate has.
const EXAMPLES: &[&str] = &["echo", "chat", "client", "kv", "http"];

/// Runs `name` with `args`; fails if it does not exit within 10 s.
fn run(name: &str, args: &[&str]) -> Output {
    let mut child = Command::new(example_binary(name))
        .args(args)
        .env_remove("RUST_LOG") // the default filter, as a user runs it
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the example");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name} {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Expects `name args` to fail cleanly, naming `culprit` on stderr.
fn expect_clear_failure(name: &str, args: &[&str], culprit: &str) {
    let out = run(name, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{name} {args:?} succeeded: {out:?}");
    assert!(
        out.status.code().is_some(),
        "{name} {args:?} died of a signal: {out:?}"
    );
    assert!(!err.contains("panicked"), "{name} {args:?} panicked: {err}");
    assert!(
        err.contains(culprit),
        "{name} {args:?}: stderr does not name {culprit:?}: {err}"
    );
}

fn bad_urls() -> Vec<String> {
    vec![
        "tcp://nohost:x".into(),
        "tcp://127.0.0.1:65536".into(),
        "ftp://x:1".into(),
        format!("unix:///{}", "p".repeat(200)),
        "tcp://[::1:7000".into(),
        "udp://bad host:1".into(),
        String::new(),
    ]
}

#[test]
fn servers_reject_bad_listen_addresses() {
    let _watchdog = watchdog("servers_reject_bad_listen", Duration::from_secs(120));
    for name in ["echo", "chat"] {
        for url in bad_urls() {
            expect_clear_failure(name, &["--listen", &url], &format!("{url:?}"));
        }
    }
}

#[test]
fn client_rejects_bad_urls() {
    let _watchdog = watchdog("client_rejects_bad_urls", Duration::from_secs(120));
    for url in bad_urls() {
        if url.is_empty() {
            continue; // named by position, "" reads as no URL: see below
        }
        expect_clear_failure("client", &[&url], &url);
    }
    expect_clear_failure("client", &[], "<URL>");
}

#[test]
fn unknown_flags_and_bad_numbers_are_rejected() {
    let _watchdog = watchdog("unknown_flags", Duration::from_secs(120));
    for name in EXAMPLES {
        expect_clear_failure(name, &["--no-such-flag"], "--no-such-flag");
    }
    expect_clear_failure("chat", &["--idle-timeout", "-5"], "-5");
    expect_clear_failure("chat", &["--max-line", "lots"], "lots");
    expect_clear_failure("http", &["--request-timeout", "-5"], "-5");
}

#[test]
fn help_exits_zero_for_every_example() {
    let _watchdog = watchdog("help_exits_zero", Duration::from_secs(120));
    for name in EXAMPLES {
        let out = run(name, &["--help"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --help: {out:?}");
        assert!(text.contains("Usage"), "{name} --help: {text}");
    }
}
