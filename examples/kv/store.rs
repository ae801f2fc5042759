//! The key-value store behind `examples/kv` and the Redis commands it runs.
//!
//! Sans-IO: [`Store::execute`] takes a parsed command and the current time
//! and appends the RESP2 reply to a buffer; [`Store::sweep`] removes expired
//! keys a bounded amount at a time. Time is always passed in, so tests run
//! on virtual time.
//!
//! Replies are encoded with the sibling `resp` module (`mod resp;` next to
//! `mod store;`).

// Included from the example, a test and a fuzz target; each uses a subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::resp::{
    parse_i64, push_decimal, write_array_len, write_bulk, write_error, write_integer, write_null,
    write_simple,
};

/// What the connection should do after the reply to a command is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Keep reading commands.
    Continue,
    /// Close once the reply is written (`QUIT`).
    Close,
}

/// Per-connection state the commands read and write (`CLIENT SETNAME`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Session {
    name: Option<Vec<u8>>, // Set by CLIENT SETNAME; `None` until then or after "".
}

impl Session {
    /// A connection's state before any command.
    pub fn new() -> Self {
        Session::default()
    }

    /// The name given with `CLIENT SETNAME`, if any.
    pub fn name(&self) -> Option<&[u8]> {
        self.name.as_deref()
    }
}

/// A stored value.
#[derive(Debug)]
struct Entry {
    value: Vec<u8>,         // The string value.
    expiry: Option<Expiry>, // When it expires; `None` if never.
}

/// When a key expires, and where it sits in [`Store::volatile`].
#[derive(Debug, Clone, Copy)]
struct Expiry {
    at: Instant, // The key is gone once `now > at`, as in Redis.
    slot: usize, // Index of the key in `Store::volatile`.
}

/// What `set` does to a key's expiry.
#[derive(Debug, Clone, Copy)]
enum Ttl {
    Clear,       // Remove it (plain SET, MSET).
    Keep,        // Leave it (SET KEEPTTL).
    At(Instant), // Replace it (SET EX/PX).
}

/// A command's name, arity and implementation.
struct Spec {
    name: &'static str, // Lower case, as in Redis's error messages.
    arity: isize,       // Argument count with the name; -n means at least n.
    run: fn(&mut Store, &mut Call<'_>),
}

/// One command being executed: its input and where its output goes.
struct Call<'c> {
    session: &'c mut Session, // The issuing connection's state.
    args: &'c [&'c [u8]],     // The arguments, the name first.
    now: Instant,             // The time the command runs at.
    out: &'c mut Vec<u8>,     // The reply is appended here.
    action: Action,           // What to do after replying.
}

/// A [`Spec`], in one line.
const fn spec(name: &'static str, arity: isize, run: fn(&mut Store, &mut Call<'_>)) -> Spec {
    Spec { name, arity, run }
}

/// Every command, looked up by a linear scan: it is short, and a miss on
/// the first byte is one comparison.
const COMMANDS: &[Spec] = &[
    spec("get", 2, Store::get),
    spec("set", -3, Store::set),
    spec("ping", -1, Store::ping),
    spec("incr", 2, Store::incr),
    spec("mset", -3, Store::mset),
    spec("mget", -2, Store::mget),
    spec("del", -2, Store::del),
    spec("exists", -2, Store::exists),
    spec("decr", 2, Store::decr),
    spec("incrby", 3, Store::incrby),
    spec("decrby", 3, Store::decrby),
    spec("expire", -3, Store::expire),
    spec("ttl", 2, Store::ttl),
    spec("pttl", 2, Store::pttl),
    spec("echo", 2, Store::echo),
    spec("dbsize", 1, Store::dbsize),
    spec("flushall", -1, Store::flush),
    spec("flushdb", -1, Store::flush),
    spec("quit", -1, Store::quit),
    spec("select", 2, Store::select),
    spec("client", -2, Store::client),
    spec("config", -2, Store::config),
    spec("command", -1, Store::command),
];

/// Longest command name in [`COMMANDS`]; longer names are unknown.
const MAX_NAME_LEN: usize = 8;

const NOT_INTEGER: &[u8] = b"ERR value is not an integer or out of range";
const SYNTAX_ERROR: &[u8] = b"ERR syntax error";

/// A string key-value store with expiry, executing Redis commands.
///
/// Expired keys vanish when next touched (lazy expiry) and, for keys never
/// touched again, when [`sweep`](Self::sweep) reaches them.
///
/// # Examples
///
/// ```ignore
/// let (mut store, mut session, mut out) = (Store::new(), Session::new(), Vec::new());
/// store.execute(&mut session, &[b"SET", b"k", b"v"], Instant::now(), &mut out);
/// assert_eq!(out, b"+OK\r\n");
/// ```
#[derive(Debug, Default)]
pub struct Store {
    map: HashMap<Vec<u8>, Entry>, // Every key, expired ones not yet removed included.
    volatile: Vec<Vec<u8>>,       // Exactly the keys with an expiry, for `sweep`.
    cursor: usize,                // Where in `volatile` the next sweep starts.
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store::default()
    }

    /// Number of keys, counting expired ones not yet removed (as Redis's
    /// `DBSIZE` does).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store holds no key at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Executes the command `args` (name first, any case) at time `now` for
    /// the connection `session`, appending the RESP2 reply to `out`.
    ///
    /// Errors (unknown command, wrong arity, bad arguments) are replies,
    /// shaped like Redis 7's. An empty `args` (a blank request) does nothing.
    pub fn execute(
        &mut self,
        session: &mut Session,
        args: &[&[u8]],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Action {
        let Some(name) = args.first() else {
            return Action::Continue;
        };
        let mut lower = [0u8; MAX_NAME_LEN];
        let lower = match lower.get_mut(..name.len()) {
            Some(lower) => {
                lower.copy_from_slice(name);
                lower.make_ascii_lowercase();
                &*lower
            }
            None => &[],
        };
        let Some(spec) = COMMANDS.iter().find(|c| c.name.as_bytes() == lower) else {
            unknown_command(args, out);
            return Action::Continue;
        };
        if !arity_ok(spec.arity, args.len()) {
            wrong_arity(spec.name, out);
            return Action::Continue;
        }
        let mut call = Call {
            session,
            args,
            now,
            out,
            action: Action::Continue,
        };
        (spec.run)(self, &mut call);
        call.action
    }

    /// Removes expired keys, examining at most `max_work` keys with an
    /// expiry, round-robin from where the last call stopped. Returns how many
    /// were removed. Call it from a periodic timer; Redis does the equivalent
    /// ten times a second.
    pub fn sweep(&mut self, now: Instant, max_work: usize) -> usize {
        let mut removed = 0;
        for _ in 0..max_work {
            if self.cursor >= self.volatile.len() {
                if self.volatile.is_empty() {
                    break;
                }
                self.cursor = 0;
            }
            let key = &self.volatile[self.cursor];
            if self.map.get(key).is_some_and(|e| e.expired(now)) {
                // Untracking swaps the last key into `cursor`: examine it next.
                self.map.remove(key.as_slice());
                self.untrack(self.cursor);
                removed += 1;
            } else {
                self.cursor += 1;
            }
        }
        removed
    }

    /// The entry for `key` unless missing or expired; an expired one is
    /// removed.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        if self.map.get(key)?.expired(now) {
            self.remove(key);
            return None;
        }
        self.map.get_mut(key)
    }

    /// Removes `key`, expired or not.
    fn remove(&mut self, key: &[u8]) {
        if let Some(Entry {
            expiry: Some(expiry),
            ..
        }) = self.map.remove(key)
        {
            self.untrack(expiry.slot);
        }
    }

    /// Drops `volatile[slot]`, moving the last key there.
    fn untrack(&mut self, slot: usize) {
        self.volatile.swap_remove(slot);
        if let Some(moved) = self.volatile.get(slot) {
            if let Some(expiry) = self.map.get_mut(moved).and_then(|e| e.expiry.as_mut()) {
                expiry.slot = slot;
            }
        }
    }

    /// Sets `key` to `value`, doing `ttl` to its expiry.
    fn store(&mut self, key: &[u8], value: &[u8], ttl: Ttl) {
        match self.map.get_mut(key) {
            Some(entry) => {
                // Reuse the buffer, unless that would pin much more memory than needed.
                if entry.value.capacity() > 2 * value.len() + 64 {
                    entry.value = value.to_vec();
                } else {
                    entry.value.clear();
                    entry.value.extend_from_slice(value);
                }
            }
            None => {
                let entry = Entry {
                    value: value.to_vec(),
                    expiry: None,
                };
                self.map.insert(key.to_vec(), entry);
            }
        }
        match ttl {
            Ttl::Keep => {}
            Ttl::Clear => self.set_expiry(key, None),
            Ttl::At(at) => self.set_expiry(key, Some(at)),
        }
    }

    /// Sets or clears the expiry of `key`, if present, keeping `volatile`
    /// exactly the keys with one.
    fn set_expiry(&mut self, key: &[u8], at: Option<Instant>) {
        let Some(entry) = self.map.get_mut(key) else {
            return;
        };
        match (&mut entry.expiry, at) {
            (Some(expiry), Some(at)) => expiry.at = at,
            (None, Some(at)) => {
                let slot = self.volatile.len();
                entry.expiry = Some(Expiry { at, slot });
                self.volatile.push(key.to_vec());
            }
            (Some(expiry), None) => {
                let slot = expiry.slot;
                entry.expiry = None;
                self.untrack(slot);
            }
            (None, None) => {}
        }
    }

    /// `PING [message]`: `+PONG`, or the message as a bulk string.
    fn ping(&mut self, c: &mut Call<'_>) {
        match c.args {
            [_] => write_simple(c.out, b"PONG"),
            [_, message] => write_bulk(c.out, message),
            _ => wrong_arity("ping", c.out),
        }
    }

    /// `ECHO message`: the message.
    fn echo(&mut self, c: &mut Call<'_>) {
        write_bulk(c.out, c.args[1]);
    }

    /// `SET key value [NX|XX] [EX seconds|PX milliseconds|KEEPTTL]`: `+OK`,
    /// or null if NX or XX is not met.
    fn set(&mut self, c: &mut Call<'_>) {
        let (key, value) = (c.args[1], c.args[2]);
        let (mut nx, mut xx, mut keep_ttl) = (false, false, false);
        let mut expire = None; // (amount, milliseconds per unit)
        let mut options = c.args[3..].iter();
        while let Some(option) = options.next() {
            let is = |name: &str| option.eq_ignore_ascii_case(name.as_bytes());
            if is("nx") && !xx {
                nx = true;
            } else if is("xx") && !nx {
                xx = true;
            } else if is("keepttl") && expire.is_none() {
                keep_ttl = true;
            } else if (is("ex") || is("px")) && !keep_ttl && expire.is_none() {
                let Some(amount) = options.next() else {
                    return write_error(c.out, SYNTAX_ERROR);
                };
                expire = Some((*amount, if is("ex") { 1000 } else { 1 }));
            } else {
                return write_error(c.out, SYNTAX_ERROR);
            }
        }
        let ttl = match expire {
            Some((amount, unit)) => match expire_at(amount, unit, c.now, "set") {
                Ok(at) => Ttl::At(at),
                Err(message) => return write_error(c.out, &message),
            },
            None if keep_ttl => Ttl::Keep,
            None => Ttl::Clear,
        };
        let exists = self.live(key, c.now).is_some();
        if (nx && exists) || (xx && !exists) {
            return write_null(c.out);
        }
        self.store(key, value, ttl);
        write_simple(c.out, b"OK");
    }

    /// `GET key`: the value, or null.
    fn get(&mut self, c: &mut Call<'_>) {
        match self.live(c.args[1], c.now) {
            Some(entry) => write_bulk(c.out, &entry.value),
            None => write_null(c.out),
        }
    }

    /// `DEL key [key ...]`: how many of the keys existed (and are now gone).
    fn del(&mut self, c: &mut Call<'_>) {
        let mut deleted = 0;
        for key in &c.args[1..] {
            if self.live(key, c.now).is_some() {
                self.remove(key);
                deleted += 1;
            }
        }
        write_integer(c.out, deleted);
    }

    /// `EXISTS key [key ...]`: how many of the keys exist, repeats counted.
    fn exists(&mut self, c: &mut Call<'_>) {
        let mut found = 0;
        for key in &c.args[1..] {
            if self.live(key, c.now).is_some() {
                found += 1;
            }
        }
        write_integer(c.out, found);
    }

    /// `INCR key`.
    fn incr(&mut self, c: &mut Call<'_>) {
        self.add(c, 1);
    }

    /// `DECR key`.
    fn decr(&mut self, c: &mut Call<'_>) {
        self.add(c, -1);
    }

    /// `INCRBY key increment`.
    fn incrby(&mut self, c: &mut Call<'_>) {
        match parse_i64(c.args[2]) {
            Some(delta) => self.add(c, delta),
            None => write_error(c.out, NOT_INTEGER),
        }
    }

    /// `DECRBY key decrement`.
    fn decrby(&mut self, c: &mut Call<'_>) {
        match parse_i64(c.args[2]) {
            Some(i64::MIN) => write_error(c.out, b"ERR decrement would overflow"),
            Some(delta) => self.add(c, -delta),
            None => write_error(c.out, NOT_INTEGER),
        }
    }

    /// Adds `delta` to the integer at `args[1]` (0 if missing), keeping its
    /// expiry; replies with the new value.
    fn add(&mut self, c: &mut Call<'_>, delta: i64) {
        let key = c.args[1];
        let new = match self.live(key, c.now) {
            Some(entry) => {
                let Some(current) = parse_i64(&entry.value) else {
                    return write_error(c.out, NOT_INTEGER);
                };
                let Some(new) = current.checked_add(delta) else {
                    return write_error(c.out, b"ERR increment or decrement would overflow");
                };
                // In place: no allocation, and the expiry is untouched.
                entry.value.clear();
                push_decimal(&mut entry.value, new);
                new
            }
            None => {
                let mut value = Vec::with_capacity(20);
                push_decimal(&mut value, delta);
                let entry = Entry {
                    value,
                    expiry: None,
                };
                self.map.insert(key.to_vec(), entry);
                delta
            }
        };
        write_integer(c.out, new);
    }

    /// `MGET key [key ...]`: each value, or null.
    fn mget(&mut self, c: &mut Call<'_>) {
        write_array_len(c.out, c.args.len() - 1);
        for key in &c.args[1..] {
            match self.live(key, c.now) {
                Some(entry) => write_bulk(c.out, &entry.value),
                None => write_null(c.out),
            }
        }
    }

    /// `MSET key value [key value ...]`: `+OK`; clears the keys' expiries.
    fn mset(&mut self, c: &mut Call<'_>) {
        if c.args.len() % 2 == 0 {
            return wrong_arity("mset", c.out);
        }
        for pair in c.args[1..].chunks_exact(2) {
            self.store(pair[0], pair[1], Ttl::Clear);
        }
        write_simple(c.out, b"OK");
    }

    /// `EXPIRE key seconds`: 1 if the key exists (a non-positive time
    /// deletes it), else 0. Redis 7's NX/XX/GT/LT options are not supported.
    fn expire(&mut self, c: &mut Call<'_>) {
        if let Some(option) = c.args.get(3) {
            let mut message = b"ERR Unsupported option ".to_vec();
            message.extend_from_slice(option);
            return write_error(c.out, &message);
        }
        let key = c.args[1];
        let Some(seconds) = parse_i64(c.args[2]) else {
            return write_error(c.out, NOT_INTEGER);
        };
        let Some(millis) = seconds.checked_mul(1000) else {
            return write_error(c.out, b"ERR invalid expire time in 'expire' command");
        };
        if self.live(key, c.now).is_none() {
            return write_integer(c.out, 0);
        }
        if millis <= 0 {
            self.remove(key);
            return write_integer(c.out, 1);
        }
        match c
            .now
            .checked_add(Duration::from_millis(millis.unsigned_abs()))
        {
            Some(at) => {
                self.set_expiry(key, Some(at));
                write_integer(c.out, 1);
            }
            None => write_error(c.out, b"ERR invalid expire time in 'expire' command"),
        }
    }

    /// `TTL key`: seconds to live, rounded to nearest; -1 if the key never
    /// expires, -2 if it does not exist.
    fn ttl(&mut self, c: &mut Call<'_>) {
        let ttl = self.remaining(c.args[1], c.now).map(|ms| (ms + 500) / 1000);
        write_integer(c.out, ttl.unwrap_or_else(|code| code));
    }

    /// `PTTL key`: milliseconds to live; -1 and -2 as for `TTL`.
    fn pttl(&mut self, c: &mut Call<'_>) {
        let ttl = self.remaining(c.args[1], c.now);
        write_integer(c.out, ttl.unwrap_or_else(|code| code));
    }

    /// Milliseconds `key` has to live, or Redis's -1 (no expiry) or -2 (no key).
    fn remaining(&mut self, key: &[u8], now: Instant) -> Result<i64, i64> {
        let entry = self.live(key, now).ok_or(-2)?;
        let expiry = entry.expiry.ok_or(-1)?;
        let ms = expiry.at.saturating_duration_since(now).as_millis();
        Ok(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    /// `DBSIZE`: the number of keys.
    fn dbsize(&mut self, c: &mut Call<'_>) {
        write_integer(c.out, i64::try_from(self.len()).unwrap_or(i64::MAX));
    }

    /// `FLUSHALL [ASYNC|SYNC]`, `FLUSHDB [ASYNC|SYNC]`: removes every key.
    fn flush(&mut self, c: &mut Call<'_>) {
        match c.args {
            [_] => {}
            [_, mode]
                if mode.eq_ignore_ascii_case(b"sync") || mode.eq_ignore_ascii_case(b"async") => {}
            _ => return write_error(c.out, SYNTAX_ERROR),
        }
        self.map.clear();
        self.volatile.clear();
        self.cursor = 0;
        write_simple(c.out, b"OK");
    }

    /// `QUIT`: `+OK`, then close.
    fn quit(&mut self, c: &mut Call<'_>) {
        write_simple(c.out, b"OK");
        c.action = Action::Close;
    }

    /// `SELECT index`: `+OK` for database 0, the only one.
    fn select(&mut self, c: &mut Call<'_>) {
        match parse_i64(c.args[1]) {
            Some(0) => write_simple(c.out, b"OK"),
            Some(_) => write_error(c.out, b"ERR DB index is out of range"),
            None => write_error(c.out, NOT_INTEGER),
        }
    }

    /// `CLIENT SETNAME name` (`+OK`; "" clears it), `CLIENT GETNAME`
    /// (the name, or null).
    fn client(&mut self, c: &mut Call<'_>) {
        let sub = c.args[1];
        if sub.eq_ignore_ascii_case(b"setname") {
            let [_, _, name] = c.args else {
                return wrong_arity("client|setname", c.out);
            };
            if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
                return write_error(
                    c.out,
                    b"ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            c.session.name = if name.is_empty() {
                None
            } else {
                Some(name.to_vec())
            };
            write_simple(c.out, b"OK");
        } else if sub.eq_ignore_ascii_case(b"getname") {
            if c.args.len() != 2 {
                return wrong_arity("client|getname", c.out);
            }
            match &c.session.name {
                Some(name) => write_bulk(c.out, name),
                None => write_null(c.out),
            }
        } else {
            unknown_subcommand(sub, "CLIENT", c.out);
        }
    }

    /// `CONFIG GET parameter [parameter ...]`: pairs for `save` ("") and
    /// `appendonly` ("no"), which `redis-benchmark` asks for; nothing else.
    fn config(&mut self, c: &mut Call<'_>) {
        const KNOWN: [(&str, &str); 2] = [("save", ""), ("appendonly", "no")];
        let sub = c.args[1];
        if !sub.eq_ignore_ascii_case(b"get") {
            return unknown_subcommand(sub, "CONFIG", c.out);
        }
        if c.args.len() < 3 {
            return wrong_arity("config|get", c.out);
        }
        let matching = || {
            KNOWN.iter().filter(|(name, _)| {
                c.args[2..]
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(name.as_bytes()))
            })
        };
        write_array_len(c.out, 2 * matching().count());
        for (name, value) in matching() {
            write_bulk(c.out, name.as_bytes());
            write_bulk(c.out, value.as_bytes());
        }
    }

    /// `COMMAND`, `COMMAND DOCS`, `COMMAND INFO`: an empty array (enough for
    /// `redis-cli`); `COMMAND COUNT`: the number of commands; `COMMAND
    /// LIST`: their names.
    fn command(&mut self, c: &mut Call<'_>) {
        let Some(sub) = c.args.get(1) else {
            return write_array_len(c.out, 0);
        };
        let is = |name: &str| sub.eq_ignore_ascii_case(name.as_bytes());
        if is("docs") || is("info") {
            write_array_len(c.out, 0);
        } else if is("count") {
            write_integer(c.out, COMMANDS.len() as i64);
        } else if is("list") {
            write_array_len(c.out, COMMANDS.len());
            for spec in COMMANDS {
                write_bulk(c.out, spec.name.as_bytes());
            }
        } else {
            unknown_subcommand(sub, "COMMAND", c.out);
        }
    }
}

impl Entry {
    /// Whether the entry has expired at `now`.
    fn expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| now > e.at)
    }
}

/// Whether `argc` arguments satisfy Redis arity `arity`.
fn arity_ok(arity: isize, argc: usize) -> bool {
    if arity >= 0 {
        argc == arity.unsigned_abs()
    } else {
        argc >= arity.unsigned_abs()
    }
}

/// The instant `amount` units of `unit` ms from `now`, checked like Redis's
/// SET: a positive integer whose end time is representable.
fn expire_at(amount: &[u8], unit: i64, now: Instant, command: &str) -> Result<Instant, Vec<u8>> {
    let amount = parse_i64(amount).ok_or_else(|| NOT_INTEGER.to_vec())?;
    let invalid = || format!("ERR invalid expire time in '{command}' command").into_bytes();
    if amount <= 0 {
        return Err(invalid());
    }
    let millis = amount.checked_mul(unit).ok_or_else(invalid)?;
    now.checked_add(Duration::from_millis(millis.unsigned_abs()))
        .ok_or_else(invalid)
}

/// Replies Redis 7's unknown-command error: the name and the start of the
/// arguments, each cut to fit 128 bytes.
fn unknown_command(args: &[&[u8]], out: &mut Vec<u8>) {
    const MAX: usize = 128;
    let mut message = b"ERR unknown command '".to_vec();
    message.extend_from_slice(&args[0][..args[0].len().min(MAX)]);
    message.extend_from_slice(b"', with args beginning with: ");
    let listed = message.len();
    for arg in &args[1..] {
        let used = message.len() - listed;
        if used >= MAX {
            break;
        }
        message.push(b'\'');
        message.extend_from_slice(&arg[..arg.len().min(MAX - used)]);
        message.extend_from_slice(b"' ");
    }
    write_error(out, &message);
}

/// Replies Redis 7's unknown-subcommand error.
fn unknown_subcommand(sub: &[u8], command: &str, out: &mut Vec<u8>) {
    let mut message = b"ERR unknown subcommand '".to_vec();
    message.extend_from_slice(&sub[..sub.len().min(128)]);
    message.extend_from_slice(format!("'. Try {command} HELP.").as_bytes());
    write_error(out, &message);
}

/// Replies Redis 7's wrong-arity error for `name` (lower case, `a|b` for a
/// subcommand).
fn wrong_arity(name: &str, out: &mut Vec<u8>) {
    let message = format!("ERR wrong number of arguments for '{name}' command");
    write_error(out, message.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store and a connection on virtual time.
    struct Harness {
        store: Store,
        session: Session,
        start: Instant,
        now: Instant,
    }

    impl Harness {
        fn new() -> Self {
            let start = Instant::now();
            Harness {
                store: Store::new(),
                session: Session::new(),
                start,
                now: start,
            }
        }

        /// Runs a command given as space-separated words; returns the reply.
        fn run(&mut self, command: &str) -> String {
            let args: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
            self.run_args(&args).0
        }

        fn run_args(&mut self, args: &[&[u8]]) -> (String, Action) {
            let mut out = Vec::new();
            let action = self
                .store
                .execute(&mut self.session, args, self.now, &mut out);
            (String::from_utf8(out).unwrap(), action)
        }

        fn run_bytes(&mut self, args: &[&[u8]]) -> Vec<u8> {
            let mut out = Vec::new();
            self.store
                .execute(&mut self.session, args, self.now, &mut out);
            out
        }

        fn advance(&mut self, ms: u64) {
            self.now += Duration::from_millis(ms);
        }

        /// Checks `volatile` and the slots stored in entries agree.
        fn assert_consistent(&self) {
            let with_expiry = self
                .store
                .map
                .values()
                .filter(|e| e.expiry.is_some())
                .count();
            assert_eq!(with_expiry, self.store.volatile.len());
            for (slot, key) in self.store.volatile.iter().enumerate() {
                assert_eq!(self.store.map[key].expiry.unwrap().slot, slot);
            }
        }
    }

    #[test]
    fn commands_are_case_insensitive() {
        let mut h = Harness::new();
        assert_eq!(h.run("sEt k v"), "+OK\r\n");
        assert_eq!(h.run("GeT k"), "$1\r\nv\r\n");
    }

    #[test]
    fn unknown_command_lists_its_first_arguments() {
        let mut h = Harness::new();
        assert_eq!(
            h.run("foo a b"),
            "-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n"
        );
        assert_eq!(
            h.run("foo"),
            "-ERR unknown command 'foo', with args beginning with: \r\n"
        );
        assert_eq!(
            h.run("verylongname"),
            "-ERR unknown command 'verylongname', with args beginning with: \r\n"
        );
    }

    #[test]
    fn unknown_command_message_is_bounded_and_one_line() {
        let mut h = Harness::new();
        let long = vec![b'x'; 300];
        let (reply, _) = h.run_args(&[b"f\r\no", &long, b"y"]);
        let expected = format!(
            "-ERR unknown command 'f  o', with args beginning with: '{}' \r\n",
            "x".repeat(128)
        );
        assert_eq!(reply, expected);
    }

    #[test]
    fn wrong_arity_names_the_command() {
        let mut h = Harness::new();
        assert_eq!(
            h.run("GET"),
            "-ERR wrong number of arguments for 'get' command\r\n"
        );
        assert_eq!(
            h.run("GET a b"),
            "-ERR wrong number of arguments for 'get' command\r\n"
        );
        assert_eq!(
            h.run("SET k"),
            "-ERR wrong number of arguments for 'set' command\r\n"
        );
        assert_eq!(
            h.run("DBSIZE x"),
            "-ERR wrong number of arguments for 'dbsize' command\r\n"
        );
    }

    #[test]
    fn empty_command_replies_nothing() {
        let mut h = Harness::new();
        assert_eq!(h.run_args(&[]), (String::new(), Action::Continue));
    }

    #[test]
    fn ping_replies_pong_or_its_message() {
        let mut h = Harness::new();
        assert_eq!(h.run("PING"), "+PONG\r\n");
        assert_eq!(h.run("PING hi"), "$2\r\nhi\r\n");
        assert_eq!(
            h.run("PING a b"),
            "-ERR wrong number of arguments for 'ping' command\r\n"
        );
    }

    #[test]
    fn echo_replies_its_argument() {
        let mut h = Harness::new();
        assert_eq!(h.run_args(&[b"ECHO", b"a\r\nb"]).0, "$4\r\na\r\nb\r\n");
        assert_eq!(
            h.run("ECHO"),
            "-ERR wrong number of arguments for 'echo' command\r\n"
        );
    }

    #[test]
    fn get_of_missing_key_is_null() {
        let mut h = Harness::new();
        assert_eq!(h.run("GET nope"), "$-1\r\n");
    }

    #[test]
    fn set_overwrites_and_stores_binary_values() {
        let mut h = Harness::new();
        h.run("SET k a-long-first-value");
        assert_eq!(h.run_bytes(&[b"SET", b"k", b"\0\xff"]), b"+OK\r\n");
        assert_eq!(h.run_bytes(&[b"GET", b"k"]), b"$2\r\n\0\xff\r\n");
    }

    #[test]
    fn set_nx_only_sets_missing_keys() {
        let mut h = Harness::new();
        assert_eq!(h.run("SET k 1 NX"), "+OK\r\n");
        assert_eq!(h.run("SET k 2 nx"), "$-1\r\n");
        assert_eq!(h.run("GET k"), "$1\r\n1\r\n");
    }

    #[test]
    fn set_xx_only_sets_existing_keys() {
        let mut h = Harness::new();
        assert_eq!(h.run("SET k 1 XX"), "$-1\r\n");
        assert_eq!(h.run("GET k"), "$-1\r\n");
        h.run("SET k 1");
        assert_eq!(h.run("SET k 2 XX"), "+OK\r\n");
        assert_eq!(h.run("GET k"), "$1\r\n2\r\n");
    }

    #[test]
    fn set_ex_and_px_expire_the_key() {
        let mut h = Harness::new();
        assert_eq!(h.run("SET a v EX 10"), "+OK\r\n");
        assert_eq!(h.run("SET b v px 1500"), "+OK\r\n");
        assert_eq!(h.run("TTL a"), ":10\r\n");
        assert_eq!(h.run("PTTL b"), ":1500\r\n");
        h.advance(1500);
        assert_eq!(
            h.run("GET b"),
            "$1\r\nv\r\n",
            "alive at exactly its expiry time"
        );
        h.advance(1);
        assert_eq!(h.run("GET b"), "$-1\r\n");
        h.advance(8500);
        assert_eq!(h.run("GET a"), "$-1\r\n");
        h.assert_consistent();
    }

    #[test]
    fn plain_set_clears_the_expiry_and_keepttl_keeps_it() {
        let mut h = Harness::new();
        h.run("SET k v EX 10");
        assert_eq!(h.run("SET k w KEEPTTL"), "+OK\r\n");
        assert_eq!(h.run("TTL k"), ":10\r\n");
        h.run("SET k x");
        assert_eq!(h.run("TTL k"), ":-1\r\n");
        h.assert_consistent();
    }

    #[test]
    fn set_syntax_errors() {
        let mut h = Harness::new();
        for bad in [
            "SET k v NX XX",
            "SET k v XX NX",
            "SET k v EX",
            "SET k v EX 1 PX 1",
            "SET k v EX 1 EX 1",
            "SET k v KEEPTTL EX 1",
            "SET k v PX 1 KEEPTTL",
            "SET k v BOGUS",
        ] {
            assert_eq!(h.run(bad), "-ERR syntax error\r\n", "{bad}");
        }
        assert_eq!(h.run("GET k"), "$-1\r\n");
    }

    #[test]
    fn set_rejects_bad_expire_times() {
        let mut h = Harness::new();
        assert_eq!(
            h.run("SET k v EX x"),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            h.run("SET k v EX 0"),
            "-ERR invalid expire time in 'set' command\r\n"
        );
        assert_eq!(
            h.run("SET k v PX -5"),
            "-ERR invalid expire time in 'set' command\r\n"
        );
        assert_eq!(
            h.run("SET k v EX 9223372036854775807"),
            "-ERR invalid expire time in 'set' command\r\n"
        );
        assert_eq!(h.run("GET k"), "$-1\r\n");
    }

    #[test]
    fn del_counts_existing_keys() {
        let mut h = Harness::new();
        h.run("MSET a 1 b 2");
        h.run("SET c 3 PX 10");
        h.advance(11);
        assert_eq!(h.run("DEL a b c d a"), ":2\r\n");
        assert_eq!(h.run("DBSIZE"), ":0\r\n");
        h.assert_consistent();
    }

    #[test]
    fn exists_counts_repeats() {
        let mut h = Harness::new();
        h.run("SET a 1");
        assert_eq!(h.run("EXISTS a b a"), ":2\r\n");
    }

    #[test]
    fn incr_and_decr_start_from_zero() {
        let mut h = Harness::new();
        assert_eq!(h.run("INCR n"), ":1\r\n");
        assert_eq!(h.run("INCR n"), ":2\r\n");
        assert_eq!(h.run("DECR m"), ":-1\r\n");
        assert_eq!(h.run("INCRBY n 10"), ":12\r\n");
        assert_eq!(h.run("DECRBY n -3"), ":15\r\n");
        assert_eq!(h.run("GET n"), "$2\r\n15\r\n");
    }

    #[test]
    fn incr_keeps_the_expiry() {
        let mut h = Harness::new();
        h.run("SET n 1 EX 5");
        h.run("INCR n");
        assert_eq!(h.run("TTL n"), ":5\r\n");
    }

    #[test]
    fn incr_of_non_integer_is_an_error() {
        let mut h = Harness::new();
        for value in ["abc", "1.5", " 1", "01", "", "99999999999999999999"] {
            h.run_args(&[b"SET", b"k", value.as_bytes()]);
            assert_eq!(
                h.run("INCR k"),
                "-ERR value is not an integer or out of range\r\n",
                "{value:?}"
            );
        }
        assert_eq!(
            h.run("INCRBY n x"),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            h.run("DECRBY n 1x"),
            "-ERR value is not an integer or out of range\r\n"
        );
    }

    #[test]
    fn incr_overflow_is_an_error() {
        let mut h = Harness::new();
        h.run("SET n 9223372036854775807");
        assert_eq!(
            h.run("INCR n"),
            "-ERR increment or decrement would overflow\r\n"
        );
        h.run("SET n -9223372036854775808");
        assert_eq!(
            h.run("DECR n"),
            "-ERR increment or decrement would overflow\r\n"
        );
        assert_eq!(
            h.run("INCRBY n -1"),
            "-ERR increment or decrement would overflow\r\n"
        );
        assert_eq!(h.run("GET n"), "$20\r\n-9223372036854775808\r\n");
        assert_eq!(
            h.run("DECRBY n -9223372036854775808"),
            "-ERR decrement would overflow\r\n"
        );
    }

    #[test]
    fn mget_returns_values_and_nulls() {
        let mut h = Harness::new();
        h.run("MSET a 1 b 22");
        assert_eq!(h.run("MGET a x b"), "*3\r\n$1\r\n1\r\n$-1\r\n$2\r\n22\r\n");
    }

    #[test]
    fn mset_with_odd_arguments_is_an_arity_error() {
        let mut h = Harness::new();
        assert_eq!(
            h.run("MSET a 1 b"),
            "-ERR wrong number of arguments for 'mset' command\r\n"
        );
        assert_eq!(
            h.run("MSET a"),
            "-ERR wrong number of arguments for 'mset' command\r\n"
        );
        assert_eq!(h.run("DBSIZE"), ":0\r\n");
    }

    #[test]
    fn mset_clears_expiries() {
        let mut h = Harness::new();
        h.run("SET a 1 EX 5");
        assert_eq!(h.run("MSET a 2"), "+OK\r\n");
        assert_eq!(h.run("TTL a"), ":-1\r\n");
        h.assert_consistent();
    }

    #[test]
    fn expire_sets_a_ttl_on_existing_keys_only() {
        let mut h = Harness::new();
        assert_eq!(h.run("EXPIRE k 10"), ":0\r\n");
        h.run("SET k v");
        assert_eq!(h.run("EXPIRE k 10"), ":1\r\n");
        assert_eq!(h.run("TTL k"), ":10\r\n");
        assert_eq!(h.run("EXPIRE k 20"), ":1\r\n");
        assert_eq!(h.run("TTL k"), ":20\r\n");
        h.advance(20_001);
        assert_eq!(h.run("EXISTS k"), ":0\r\n");
        h.assert_consistent();
    }

    #[test]
    fn expire_with_non_positive_time_deletes() {
        let mut h = Harness::new();
        h.run("SET k v");
        assert_eq!(h.run("EXPIRE k 0"), ":1\r\n");
        assert_eq!(h.run("GET k"), "$-1\r\n");
        h.run("SET k v");
        assert_eq!(h.run("EXPIRE k -5"), ":1\r\n");
        assert_eq!(h.run("DBSIZE"), ":0\r\n");
    }

    #[test]
    fn expire_errors() {
        let mut h = Harness::new();
        h.run("SET k v");
        assert_eq!(
            h.run("EXPIRE k x"),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            h.run("EXPIRE k 9223372036854775807"),
            "-ERR invalid expire time in 'expire' command\r\n"
        );
        assert_eq!(h.run("EXPIRE k 10 NX"), "-ERR Unsupported option NX\r\n");
        assert_eq!(
            h.run("EXPIRE k"),
            "-ERR wrong number of arguments for 'expire' command\r\n"
        );
        assert_eq!(h.run("TTL k"), ":-1\r\n");
    }

    #[test]
    fn ttl_counts_down_on_virtual_time() {
        let mut h = Harness::new();
        assert_eq!(h.run("TTL k"), ":-2\r\n");
        h.run("SET k v");
        assert_eq!(h.run("TTL k"), ":-1\r\n");
        h.run("EXPIRE k 3");
        assert_eq!(h.run("TTL k"), ":3\r\n");
        h.advance(1499);
        assert_eq!(h.run("TTL k"), ":2\r\n", "1501 ms rounds to 2 s");
        h.advance(2);
        assert_eq!(h.run("TTL k"), ":1\r\n", "1499 ms rounds to 1 s");
        assert_eq!(h.run("PTTL k"), ":1499\r\n");
        h.advance(1499);
        assert_eq!(h.run("TTL k"), ":0\r\n");
        h.advance(1);
        assert_eq!(h.run("TTL k"), ":-2\r\n");
        assert_eq!(h.run("PTTL k"), ":-2\r\n");
    }

    #[test]
    fn dbsize_counts_keys_and_flushall_removes_them() {
        let mut h = Harness::new();
        h.run("MSET a 1 b 2");
        h.run("SET c 3 EX 1");
        assert_eq!(h.run("DBSIZE"), ":3\r\n");
        assert_eq!(h.run("FLUSHALL"), "+OK\r\n");
        assert_eq!(h.run("DBSIZE"), ":0\r\n");
        assert_eq!(h.store.sweep(h.now, 10), 0);
        h.run("SET a 1");
        assert_eq!(h.run("flushdb ASYNC"), "+OK\r\n");
        assert_eq!(h.run("FLUSHALL now"), "-ERR syntax error\r\n");
        assert!(h.store.is_empty());
        h.assert_consistent();
    }

    #[test]
    fn quit_replies_ok_then_closes() {
        let mut h = Harness::new();
        assert_eq!(
            h.run_args(&[b"QUIT"]),
            ("+OK\r\n".to_string(), Action::Close)
        );
        assert_eq!(h.run_args(&[b"PING"]).1, Action::Continue);
    }

    #[test]
    fn select_accepts_only_database_zero() {
        let mut h = Harness::new();
        assert_eq!(h.run("SELECT 0"), "+OK\r\n");
        assert_eq!(h.run("SELECT 1"), "-ERR DB index is out of range\r\n");
        assert_eq!(
            h.run("SELECT x"),
            "-ERR value is not an integer or out of range\r\n"
        );
    }

    #[test]
    fn client_setname_and_getname_use_the_session() {
        let mut h = Harness::new();
        assert_eq!(h.run("CLIENT GETNAME"), "$-1\r\n");
        assert_eq!(h.run("client setname bench-1"), "+OK\r\n");
        assert_eq!(h.session.name(), Some(&b"bench-1"[..]));
        assert_eq!(h.run("CLIENT GETNAME"), "$7\r\nbench-1\r\n");
        h.run_args(&[b"CLIENT", b"SETNAME", b""]);
        assert_eq!(h.session.name(), None);
    }

    #[test]
    fn client_errors() {
        let mut h = Harness::new();
        assert_eq!(
            h.run_args(&[b"CLIENT", b"SETNAME", b"a b"]).0,
            "-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
        );
        assert_eq!(
            h.run("CLIENT SETNAME"),
            "-ERR wrong number of arguments for 'client|setname' command\r\n"
        );
        assert_eq!(
            h.run("CLIENT GETNAME x"),
            "-ERR wrong number of arguments for 'client|getname' command\r\n"
        );
        assert_eq!(
            h.run("CLIENT KILL"),
            "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n"
        );
        assert_eq!(
            h.run("CLIENT"),
            "-ERR wrong number of arguments for 'client' command\r\n"
        );
    }

    #[test]
    fn config_get_answers_what_redis_benchmark_asks() {
        let mut h = Harness::new();
        assert_eq!(h.run("CONFIG GET save"), "*2\r\n$4\r\nsave\r\n$0\r\n\r\n");
        assert_eq!(
            h.run("config get APPENDONLY"),
            "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n"
        );
        assert_eq!(h.run("CONFIG GET maxmemory"), "*0\r\n");
        assert_eq!(
            h.run("CONFIG GET"),
            "-ERR wrong number of arguments for 'config|get' command\r\n"
        );
        assert_eq!(
            h.run("CONFIG SET a b"),
            "-ERR unknown subcommand 'SET'. Try CONFIG HELP.\r\n"
        );
    }

    #[test]
    fn command_replies_enough_for_redis_cli() {
        let mut h = Harness::new();
        assert_eq!(h.run("COMMAND"), "*0\r\n");
        assert_eq!(h.run("COMMAND DOCS"), "*0\r\n");
        assert_eq!(h.run("COMMAND COUNT"), format!(":{}\r\n", COMMANDS.len()));
        assert!(h.run("COMMAND LIST").contains("$8\r\nflushall\r\n"));
        assert_eq!(
            h.run("COMMAND X"),
            "-ERR unknown subcommand 'X'. Try COMMAND HELP.\r\n"
        );
    }

    #[test]
    fn command_names_fit_the_lookup_buffer() {
        assert!(COMMANDS.iter().all(|c| c.name.len() <= MAX_NAME_LEN));
        assert!(COMMANDS
            .iter()
            .all(|c| c.name == c.name.to_ascii_lowercase()));
    }

    #[test]
    fn sweep_removes_expired_keys_in_bounded_steps() {
        let mut h = Harness::new();
        for i in 0..10 {
            h.run(&format!(
                "SET k{i} v PX {}",
                if i % 2 == 0 { 100 } else { 10_000 }
            ));
        }
        h.run("SET forever v");
        h.advance(101);
        let mut removed = Vec::new();
        for _ in 0..4 {
            removed.push(h.store.sweep(h.now, 3));
            h.assert_consistent();
        }
        assert_eq!(removed.iter().sum::<usize>(), 5);
        assert!(removed.iter().all(|&n| n <= 3));
        assert_eq!(h.run("DBSIZE"), ":6\r\n");
        h.advance(10_000);
        assert_eq!(h.store.sweep(h.now, 100), 5);
        assert_eq!(h.store.sweep(h.now, 100), 0);
        assert_eq!(h.run("DBSIZE"), ":1\r\n");
        assert_eq!(h.now.duration_since(h.start), Duration::from_millis(10_101));
    }

    #[test]
    fn sweep_of_empty_store_does_nothing() {
        let mut h = Harness::new();
        assert_eq!(h.store.sweep(h.now, 100), 0);
        h.run("SET a 1");
        assert_eq!(h.store.sweep(h.now, 100), 0);
    }

    #[test]
    fn expiry_bookkeeping_survives_churn() {
        let mut h = Harness::new();
        for round in 0..50u64 {
            let key = format!("k{}", round % 7);
            match round % 5 {
                0 => h.run(&format!("SET {key} v EX {}", round % 3 + 1)),
                1 => h.run(&format!("DEL {key}")),
                2 => h.run(&format!("EXPIRE {key} 2")),
                3 => h.run(&format!("SET {key} w")),
                _ => h.store.sweep(h.now, 2).to_string(),
            };
            h.advance(round * 37 % 700);
            h.assert_consistent();
        }
    }
}
