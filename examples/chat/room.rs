//! The chat room: who is in it, what their lines mean, and who must hear what.
//!
//! No sockets here. The event loop calls [`Room::join`] when a client
//! connects, [`Room::line`] for each line it sends (terminator stripped) and
//! [`Room::leave`] when its connection ends; each call pushes [`Output`]s
//! saying what to send to whom. Deliver them in order, before the next call,
//! because [`Output::All`] means the members at delivery time.
//!
//! Every message is UTF-8 text ending in a bare `"\n"`, which `nc` and
//! `telnet` both display well. Input need not be UTF-8: invalid sequences and
//! control characters (which could drive the other clients' terminals)
//! become U+FFFD.
//!
//! Used by the chat example and by tests, each needing only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;

/// Most characters in a nickname.
pub const MAX_NAME: usize = 32;

/// The command summary sent on join and for `/help`.
const HELP: &str = "\
* commands:
*   /nick NAME   change your name (1-32 letters, digits, '_' or '-')
*   /who         list who is here
*   /me ACTION   tell everyone what you are doing
*   /quit        leave
*   /help        show this help
*   //text       send a line that starts with '/'
";

/// Something the caller must do after the room handled an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<K> {
    /// Send the message to this one member.
    To(K, Vec<u8>),
    /// Send the message to every member of [`Room::members`] but `except`.
    ///
    /// The message is built once; the caller copies it into each member's
    /// send queue.
    All {
        /// The member not to send it to, usually its author.
        except: Option<K>,
        /// The message.
        msg: Vec<u8>,
    },
    /// Close this connection once what was sent to it has been flushed.
    ///
    /// The member has already left the room: calling [`Room::leave`] for it
    /// later does nothing.
    Close(K),
}

/// Why a member left, as told to the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client sent `/quit` (used by the room itself).
    Quit,
    /// The client closed its connection.
    Hangup,
    /// The client read too slowly and its send queue overflowed.
    TooSlow,
    /// The client was idle for too long.
    TimedOut,
    /// The client sent a line longer than the server accepts.
    LineTooLong,
}

impl Reason {
    /// The words added to the leave notice, if any.
    fn note(self) -> Option<&'static str> {
        match self {
            Reason::Quit | Reason::Hangup => None,
            Reason::TooSlow => Some("too slow"),
            Reason::TimedOut => Some("timed out"),
            Reason::LineTooLong => Some("line too long"),
        }
    }
}

/// Why a `/nick` was refused; the `Display` text is sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameError {
    /// No name was given.
    Empty,
    /// The name has more than [`MAX_NAME`] characters.
    TooLong,
    /// The name has a character other than ASCII letters, digits, `_`, `-`.
    BadChar,
    /// The name starts with `guest`, kept for the names given on join.
    Reserved,
    /// Another member has this name, ignoring ASCII case.
    Taken,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameError::Empty => "usage: /nick NAME",
            NameError::TooLong => "name too long (at most 32 characters)",
            NameError::BadChar => "a name may only have letters, digits, '_' and '-'",
            NameError::Reserved => "names starting with 'guest' are reserved",
            NameError::Taken => "that name is taken",
        })
    }
}

/// The members of a chat room, by connection key `K`, and their names.
#[derive(Debug)]
pub struct Room<K> {
    members: HashMap<K, String>, // connection key -> current name
    guests: u64,                 // guest names handed out so far
}

impl<K: Copy + Eq + Hash> Default for Room<K> {
    fn default() -> Self {
        Room::new()
    }
}

impl<K: Copy + Eq + Hash> Room<K> {
    /// Creates an empty room.
    pub fn new() -> Self {
        Room {
            members: HashMap::new(),
            guests: 0,
        }
    }

    /// Returns how many members the room has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Returns whether the room has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Returns the keys of all members, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = K> + '_ {
        self.members.keys().copied()
    }

    /// Returns the name of a member, or `None` if `key` is not one.
    pub fn name(&self, key: K) -> Option<&str> {
        self.members.get(&key).map(String::as_str)
    }

    /// Adds `key` as `guestN`, welcomes it and tells everyone.
    ///
    /// Does nothing if `key` is already a member.
    pub fn join(&mut self, key: K, out: &mut Vec<Output<K>>) {
        if self.members.contains_key(&key) {
            return;
        }
        self.guests += 1;
        let name = format!("guest{}", self.guests);
        out.push(Output::To(
            key,
            format!("* welcome, you are {name}\n{HELP}").into_bytes(),
        ));
        out.push(Output::All {
            except: None,
            msg: format!("* {name} joined\n").into_bytes(),
        });
        self.members.insert(key, name);
    }

    /// Handles one line from `key`, its terminator already stripped.
    ///
    /// A line starting with `/` is a command; any other non-blank line goes
    /// to the other members as `name: line`. Does nothing if `key` is not a
    /// member.
    pub fn line(&mut self, key: K, line: &[u8], out: &mut Vec<Output<K>>) {
        let Some(name) = self.members.get(&key) else {
            return;
        };
        let text = clean(line);
        if text.trim().is_empty() {
            return;
        }
        let text = match text.strip_prefix('/') {
            Some(escaped) if escaped.starts_with('/') => escaped,
            Some(command) => return self.command(key, command, out),
            None => &text,
        };
        out.push(Output::All {
            except: Some(key),
            msg: format!("{name}: {text}\n").into_bytes(),
        });
    }

    /// Removes `key` and tells the others why it left.
    ///
    /// Sends nothing to `key` itself: its connection is assumed gone or
    /// going. Does nothing if `key` is not a member, for instance after its
    /// `/quit`.
    pub fn leave(&mut self, key: K, reason: Reason, out: &mut Vec<Output<K>>) {
        let Some(name) = self.members.remove(&key) else {
            return;
        };
        let msg = match reason.note() {
            Some(note) => format!("* {name} left ({note})\n"),
            None => format!("* {name} left\n"),
        };
        out.push(Output::All {
            except: None,
            msg: msg.into_bytes(),
        });
    }

    /// Runs the command in `line` (the text after the `/`) for `key`.
    fn command(&mut self, key: K, line: &str, out: &mut Vec<Output<K>>) {
        let (command, arg) = match line.split_once(char::is_whitespace) {
            Some((command, arg)) => (command, arg.trim()),
            None => (line, ""),
        };
        match command.to_ascii_lowercase().as_str() {
            "nick" => self.nick(key, arg, out),
            "who" => out.push(Output::To(key, self.who().into_bytes())),
            "me" if arg.is_empty() => out.push(error(key, "usage: /me ACTION")),
            "me" => out.push(Output::All {
                except: None,
                msg: format!("* {} {arg}\n", self.members[&key]).into_bytes(),
            }),
            "quit" => {
                out.push(Output::To(key, b"* bye\n".to_vec()));
                out.push(Output::Close(key));
                self.leave(key, Reason::Quit, out);
            }
            "help" => out.push(Output::To(key, HELP.as_bytes().to_vec())),
            _ => out.push(error(
                key,
                &format!("unknown command '/{command}', try /help"),
            )),
        }
    }

    /// Renames `key` to `new`, or tells it why not.
    fn nick(&mut self, key: K, new: &str, out: &mut Vec<Output<K>>) {
        if self.members[&key] == new {
            out.push(Output::To(
                key,
                format!("* you are already {new}\n").into_bytes(),
            ));
            return;
        }
        if let Err(why) = self.check_name(key, new) {
            out.push(error(key, &why.to_string()));
            return;
        }
        let old = std::mem::replace(self.members.get_mut(&key).unwrap(), new.to_owned());
        out.push(Output::All {
            except: None,
            msg: format!("* {old} is now {new}\n").into_bytes(),
        });
    }

    /// Checks that `key` may take `name`.
    ///
    /// O(members) to find a clash; a chat example does not need an index.
    fn check_name(&self, key: K, name: &str) -> Result<(), NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(NameError::BadChar);
        }
        // ASCII only from here, so bytes are characters.
        if name.len() > MAX_NAME {
            return Err(NameError::TooLong);
        }
        if name.len() >= 5 && name[..5].eq_ignore_ascii_case("guest") {
            return Err(NameError::Reserved);
        }
        let taken = self
            .members
            .iter()
            .any(|(&other, taken)| other != key && taken.eq_ignore_ascii_case(name));
        if taken {
            return Err(NameError::Taken);
        }
        Ok(())
    }

    /// The `/who` reply: the members' names, sorted.
    fn who(&self) -> String {
        let mut names: Vec<&str> = self.members.values().map(String::as_str).collect();
        names.sort_unstable_by_key(|name| name.to_ascii_lowercase());
        format!("* {} here: {}\n", names.len(), names.join(", "))
    }
}

/// An error line for `key`.
fn error<K>(key: K, why: &str) -> Output<K> {
    Output::To(key, format!("! {why}\n").into_bytes())
}

/// Decodes a line lossily, drops trailing whitespace, and replaces control
/// characters but tab with U+FFFD.
fn clean(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .trim_end()
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one room call and returns what it output.
    fn run(f: impl FnOnce(&mut Vec<Output<u32>>)) -> Vec<Output<u32>> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    /// A room with members 1, 2 and 3 (guest1, guest2, guest3).
    fn room_of_three() -> Room<u32> {
        let mut room = Room::new();
        let mut out = Vec::new();
        for key in 1..=3 {
            room.join(key, &mut out);
        }
        room
    }

    /// Resolves outputs into what each member receives, as text, plus the
    /// keys to close: the delivery loop the caller writes.
    fn deliver(room: &Room<u32>, out: Vec<Output<u32>>) -> (Vec<(u32, String)>, Vec<u32>) {
        let mut sent = Vec::new();
        let mut closed = Vec::new();
        for o in out {
            match o {
                Output::To(key, msg) => sent.push((key, String::from_utf8(msg).unwrap())),
                Output::All { except, msg } => {
                    let mut keys: Vec<u32> =
                        room.members().filter(|&k| Some(k) != except).collect();
                    keys.sort_unstable();
                    for key in keys {
                        sent.push((key, String::from_utf8(msg.clone()).unwrap()));
                    }
                }
                Output::Close(key) => closed.push(key),
            }
        }
        (sent, closed)
    }

    /// The single message sent to `key` by outputs `out`.
    fn reply(out: &[Output<u32>], key: u32) -> String {
        match out {
            [Output::To(k, msg)] if *k == key => String::from_utf8(msg.clone()).unwrap(),
            _ => panic!("expected one message to {key}, got {out:?}"),
        }
    }

    fn all(except: Option<u32>, msg: &str) -> Output<u32> {
        Output::All {
            except,
            msg: msg.as_bytes().to_vec(),
        }
    }

    #[test]
    fn join_names_guests_in_order_and_tells_everyone() {
        let mut room = Room::new();
        let out = run(|out| room.join(7, out));
        match &out[..] {
            [Output::To(7, welcome), notice] => {
                let welcome = String::from_utf8(welcome.clone()).unwrap();
                assert!(welcome.starts_with("* welcome, you are guest1\n"));
                assert!(welcome.contains("/nick NAME"));
                assert_eq!(*notice, all(None, "* guest1 joined\n"));
            }
            _ => panic!("{out:?}"),
        }
        let out = run(|out| room.join(8, out));
        assert_eq!(out[1], all(None, "* guest2 joined\n"));
        assert_eq!(room.name(8), Some("guest2"));
        assert_eq!(room.len(), 2);
    }

    #[test]
    fn joining_twice_does_nothing() {
        let mut room = room_of_three();
        assert!(run(|out| room.join(1, out)).is_empty());
        assert_eq!(room.name(1), Some("guest1"));
    }

    #[test]
    fn guest_numbers_are_not_reused_after_leaving() {
        let mut room = room_of_three();
        run(|out| room.leave(3, Reason::Hangup, out));
        run(|out| room.join(4, out));
        assert_eq!(room.name(4), Some("guest4"));
    }

    #[test]
    fn line_reaches_every_other_member_once() {
        let mut room = room_of_three();
        let out = run(|out| room.line(2, b"hello", out));
        assert_eq!(out, [all(Some(2), "guest2: hello\n")]);
        let (sent, closed) = deliver(&room, out);
        assert_eq!(
            sent,
            [
                (1, "guest2: hello\n".to_owned()),
                (3, "guest2: hello\n".to_owned())
            ]
        );
        assert!(closed.is_empty());
    }

    #[test]
    fn blank_lines_are_ignored() {
        let mut room = room_of_three();
        for line in [&b""[..], b"   ", b"\t\r"] {
            assert!(run(|out| room.line(1, line, out)).is_empty());
        }
    }

    #[test]
    fn trailing_whitespace_is_trimmed() {
        let mut room = room_of_three();
        let out = run(|out| room.line(1, b"  hi \r", out));
        assert_eq!(out, [all(Some(1), "guest1:   hi\n")]);
    }

    #[test]
    fn double_slash_sends_a_line_starting_with_slash() {
        let mut room = room_of_three();
        let out = run(|out| room.line(1, b"//etc/passwd", out));
        assert_eq!(out, [all(Some(1), "guest1: /etc/passwd\n")]);
    }

    #[test]
    fn lines_from_non_members_are_ignored() {
        let mut room = room_of_three();
        assert!(run(|out| room.line(9, b"hello", out)).is_empty());
    }

    #[test]
    fn nick_renames_and_tells_everyone() {
        let mut room = room_of_three();
        let out = run(|out| room.line(1, b"/nick alice", out));
        assert_eq!(out, [all(None, "* guest1 is now alice\n")]);
        assert_eq!(room.name(1), Some("alice"));
        let out = run(|out| room.line(1, b"hi", out));
        assert_eq!(out, [all(Some(1), "alice: hi\n")]);
    }

    #[test]
    fn nick_refuses_a_name_taken_in_any_case() {
        let mut room = room_of_three();
        run(|out| room.line(1, b"/nick alice", out));
        let out = run(|out| room.line(2, b"/nick ALICE", out));
        assert_eq!(reply(&out, 2), "! that name is taken\n");
        assert_eq!(room.name(2), Some("guest2"));
    }

    #[test]
    fn nick_may_change_the_case_of_ones_own_name() {
        let mut room = room_of_three();
        run(|out| room.line(1, b"/nick alice", out));
        let out = run(|out| room.line(1, b"/nick Alice", out));
        assert_eq!(out, [all(None, "* alice is now Alice\n")]);
    }

    #[test]
    fn nick_to_the_same_name_changes_nothing() {
        let mut room = room_of_three();
        let out = run(|out| room.line(1, b"/nick guest1", out));
        assert_eq!(reply(&out, 1), "* you are already guest1\n");
    }

    #[test]
    fn nick_refuses_invalid_names_with_the_reason() {
        let mut room = room_of_three();
        let long = format!("/nick {}", "a".repeat(MAX_NAME + 1));
        let cases: [(&[u8], &str); 6] = [
            (b"/nick", "! usage: /nick NAME\n"),
            (b"/nick   ", "! usage: /nick NAME\n"),
            (
                b"/nick al ice",
                "! a name may only have letters, digits, '_' and '-'\n",
            ),
            (
                b"/nick \xc3\xa9mile",
                "! a name may only have letters, digits, '_' and '-'\n",
            ),
            (
                b"/nick Guest9",
                "! names starting with 'guest' are reserved\n",
            ),
            (long.as_bytes(), "! name too long (at most 32 characters)\n"),
        ];
        for (line, why) in cases {
            let out = run(|out| room.line(1, line, out));
            assert_eq!(
                reply(&out, 1),
                why,
                "for {:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(room.name(1), Some("guest1"));
    }

    #[test]
    fn nick_accepts_max_length_names_of_the_allowed_characters() {
        let mut room = room_of_three();
        let name = format!("{}_-9Z", "a".repeat(MAX_NAME - 4));
        let out = run(|out| room.line(1, format!("/nick {name}").as_bytes(), out));
        assert_eq!(out, [all(None, &format!("* guest1 is now {name}\n"))]);
    }

    #[test]
    fn who_lists_members_sorted() {
        let mut room = room_of_three();
        run(|out| room.line(3, b"/nick Bob", out));
        run(|out| room.line(2, b"/nick alice", out));
        let out = run(|out| room.line(1, b"/WHO", out));
        assert_eq!(reply(&out, 1), "* 3 here: alice, Bob, guest1\n");
    }

    #[test]
    fn me_tells_everyone_including_the_sender() {
        let mut room = room_of_three();
        run(|out| room.line(1, b"/nick alice", out));
        let out = run(|out| room.line(1, b"/me waves", out));
        assert_eq!(out, [all(None, "* alice waves\n")]);
        let out = run(|out| room.line(1, b"/me", out));
        assert_eq!(reply(&out, 1), "! usage: /me ACTION\n");
    }

    #[test]
    fn quit_says_bye_closes_and_tells_the_others() {
        let mut room = room_of_three();
        let out = run(|out| room.line(2, b"/quit", out));
        assert_eq!(
            out,
            [
                Output::To(2, b"* bye\n".to_vec()),
                Output::Close(2),
                all(None, "* guest2 left\n"),
            ]
        );
        let (sent, closed) = deliver(&room, out);
        assert_eq!(closed, [2]);
        assert!(!sent[1..].iter().any(|(key, _)| *key == 2));
        // The loop reports the close later: no second notice.
        assert!(run(|out| room.leave(2, Reason::Hangup, out)).is_empty());
        assert_eq!(room.len(), 2);
    }

    #[test]
    fn leave_tells_the_others_the_reason() {
        let mut room = room_of_three();
        run(|out| room.line(2, b"/nick bob", out));
        let cases = [
            (1, Reason::Hangup, "* guest1 left\n"),
            (2, Reason::TooSlow, "* bob left (too slow)\n"),
            (3, Reason::TimedOut, "* guest3 left (timed out)\n"),
        ];
        for (key, reason, notice) in cases {
            let out = run(|out| room.leave(key, reason, out));
            assert_eq!(out, [all(None, notice)]);
            assert_eq!(room.name(key), None);
        }
        assert!(room.is_empty());
        let mut room = room_of_three();
        let out = run(|out| room.leave(1, Reason::LineTooLong, out));
        assert_eq!(out, [all(None, "* guest1 left (line too long)\n")]);
    }

    #[test]
    fn help_lists_the_commands() {
        let mut room = room_of_three();
        let help = reply(&run(|out| room.line(1, b"/help", out)), 1);
        for command in ["/nick", "/who", "/me", "/quit", "/help"] {
            assert!(help.contains(command), "{command} missing from {help}");
        }
    }

    #[test]
    fn unknown_command_gets_an_error() {
        let mut room = room_of_three();
        let out = run(|out| room.line(1, b"/dance now", out));
        assert_eq!(reply(&out, 1), "! unknown command '/dance', try /help\n");
        let out = run(|out| room.line(1, b"/", out));
        assert_eq!(reply(&out, 1), "! unknown command '/', try /help\n");
    }

    #[test]
    fn non_utf8_and_control_characters_become_replacement_characters() {
        let mut room = room_of_three();
        let out = run(|out| room.line(1, b"caf\xe9 \x1b[2J\tok\xff", out));
        assert_eq!(
            out,
            [all(
                Some(1),
                "guest1: caf\u{fffd} \u{fffd}[2J\tok\u{fffd}\n"
            )]
        );
        let out = run(|out| room.line(1, b"/me \xff\xfe", out));
        assert_eq!(out, [all(None, "* guest1 \u{fffd}\u{fffd}\n")]);
    }

    #[test]
    fn any_bytes_never_panic() {
        const BYTES: &[u8] = b"/ nickmewhoquithelpguest_-aZ9\t\r\x00\x1b\x7f\xc3\xa9\xe9\xff";
        let mut room = room_of_three();
        let mut seed = 0x2545_f491_u32;
        let mut next = move || {
            // xorshift32: deterministic, and enough to stir the bytes.
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize
        };
        for _ in 0..5000 {
            let key = 1 + (next() % 3) as u32;
            let line: Vec<u8> = (0..next() % 40)
                .map(|_| BYTES[next() % BYTES.len()])
                .collect();
            let out = run(|out| room.line(key, &line, out));
            if out.contains(&Output::Close(key)) {
                run(|out| room.join(key, out));
            }
        }
        assert_eq!(room.len(), 3);
    }
}
