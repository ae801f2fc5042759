//! Config validation: a setting the loop cannot work with is refused up
//! front, by `Config::validate` and by `EventLoop::with_config`, with an
//! `InvalidInput` error that names the field; sensible edge values pass.
//!
//! Unchecked, `write_budget: 0` leaves a queued reply pending forever while
//! the loop spins, and `accepts_per_turn: 0` never accepts while the loop
//! spins.

mod util;

use std::io::ErrorKind;

use netloop::{Config, EventLoop};

/// Both `validate` and `with_config` refuse `config`, naming `field`.
fn refused(config: Config, field: &str) {
    let e = config
        .validate()
        .expect_err(&format!("validate accepted a bad {field}"));
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "validate: {e}");
    assert!(
        e.to_string().contains(field),
        "validate's error does not name {field}: {e}"
    );
    let e = EventLoop::with_config(util::Echo, config)
        .expect_err(&format!("with_config accepted a bad {field}"));
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "with_config: {e}");
    assert!(
        e.to_string().contains(field),
        "with_config's error does not name {field}: {e}"
    );
}

/// Both `validate` and `with_config` accept `config`.
fn accepted(config: Config, what: &str) {
    if let Err(e) = config.validate() {
        panic!("validate refused {what}: {e}");
    }
    if let Err(e) = EventLoop::with_config(util::Echo, config) {
        panic!("with_config refused {what}: {e}");
    }
}

#[test]
fn default_config_is_valid() {
    accepted(Config::default(), "the default config");
}

#[test]
fn zero_write_budget_is_refused() {
    refused(
        Config {
            write_budget: 0,
            ..Default::default()
        },
        "write_budget",
    );
}

#[test]
fn zero_read_budget_is_refused() {
    refused(
        Config {
            read_budget: 0,
            ..Default::default()
        },
        "read_budget",
    );
}

#[test]
fn zero_accepts_per_turn_is_refused() {
    refused(
        Config {
            accepts_per_turn: 0,
            ..Default::default()
        },
        "accepts_per_turn",
    );
}

#[test]
fn zero_events_capacity_is_refused() {
    refused(
        Config {
            events_capacity: 0,
            ..Default::default()
        },
        "events_capacity",
    );
}

#[test]
fn low_water_above_high_water_is_refused() {
    refused(
        Config {
            low_water: 2 << 20,
            high_water: 1 << 20,
            ..Default::default()
        },
        "low_water",
    );
}

#[test]
fn edge_values_that_make_sense_are_accepted() {
    accepted(
        Config {
            low_water: 1 << 20,
            high_water: 1 << 20,
            ..Default::default()
        },
        "low_water equal to high_water",
    );
    accepted(
        Config {
            high_water: usize::MAX, // a client that throttles its own source
            ..Default::default()
        },
        "high_water usize::MAX",
    );
    accepted(
        Config {
            high_water: 128 << 20,
            max_write_queue: 64 << 20,
            ..Default::default()
        },
        "high_water above max_write_queue",
    );
    accepted(
        Config {
            read_budget: 1,
            write_budget: 1,
            accepts_per_turn: 1,
            events_capacity: 1,
            ..Default::default()
        },
        "budgets and capacity of 1",
    );
}
