//! Timers: order, cancellation, periods.

mod util;

use std::time::{Duration, Instant};

use netloop::{Context, EventLoop, Handler, TimerId};

#[derive(Default)]
struct Recorder {
    fired: Vec<(TimerId, Instant)>,
    stop_after: usize,
    cancel_on_first: Option<TimerId>,
}

impl Handler for Recorder {
    type Conn = ();
    type Msg = ();
    fn on_timer(&mut self, cx: &mut Context<'_>, timer: TimerId) {
        self.fired.push((timer, Instant::now()));
        if let Some(t) = self.cancel_on_first.take() {
            assert!(cx.cancel_timer(t));
        }
        if self.fired.len() >= self.stop_after {
            cx.stop();
        }
    }
}

fn run(el: &mut EventLoop<Recorder>) {
    let deadline = Instant::now() + util::STEP;
    while el.run_once(Some(Duration::from_millis(50))).unwrap() {
        assert!(Instant::now() < deadline, "timers did not finish in time");
    }
}

#[test]
fn timers_fire_in_order_and_cancelled_ones_do_not() {
    let mut el = EventLoop::new(Recorder {
        stop_after: 3,
        ..Default::default()
    })
    .unwrap();
    let mut cx = el.context();
    let c = cx.set_timer(Duration::from_millis(30));
    let gone = cx.set_timer(Duration::from_millis(20));
    let a = cx.set_timer(Duration::from_millis(5));
    let b = cx.set_timer(Duration::from_millis(10));
    let same = cx.set_timer(Duration::from_millis(30)); // same deadline as c, set later
    assert!(cx.cancel_timer(gone));
    assert!(
        !cx.cancel_timer(gone),
        "cancelling twice is a harmless false"
    );
    el.handler_mut().stop_after = 4;
    run(&mut el);
    let order: Vec<TimerId> = el.handler().fired.iter().map(|f| f.0).collect();
    assert_eq!(order, vec![a, b, c, same]);
}

#[test]
fn a_timer_can_cancel_another_from_its_callback() {
    let mut el = EventLoop::new(Recorder {
        stop_after: 2,
        ..Default::default()
    })
    .unwrap();
    let mut cx = el.context();
    let first = cx.set_timer(Duration::from_millis(5));
    let doomed = cx.set_timer(Duration::from_millis(15));
    let last = cx.set_timer(Duration::from_millis(30));
    el.handler_mut().cancel_on_first = Some(doomed);
    run(&mut el);
    let order: Vec<TimerId> = el.handler().fired.iter().map(|f| f.0).collect();
    assert_eq!(order, vec![first, last]);
}

#[test]
fn periodic_timers_keep_their_period() {
    let mut el = EventLoop::new(Recorder {
        stop_after: 10,
        ..Default::default()
    })
    .unwrap();
    let start = Instant::now();
    let period = Duration::from_millis(20);
    let tick = el.context().set_interval(period);
    run(&mut el);
    let fired = &el.handler().fired;
    assert_eq!(fired.len(), 10);
    assert!(fired.iter().all(|f| f.0 == tick));
    for (i, (_, at)) in fired.iter().enumerate() {
        // Never early: tick i is due at start + (i+1) periods.
        assert!(*at >= start + period * (i as u32 + 1), "tick {i} early");
    }
    // The phase is kept: ten ticks take about ten periods, not ten periods
    // plus ten callbacks' worth of drift (a loose bound for a loaded machine).
    assert!(fired[9].1 - start < period * 10 + Duration::from_secs(2));
    assert!(
        el.context().cancel_timer(tick),
        "still live until cancelled"
    );
}
