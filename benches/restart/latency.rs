//! Restart latency, sections 1 to 7 of the table: the fork+exec floor,
//! grestart and shellflip restarted idle and under load (and what the load
//! saw), the steady state, the cost per handed-over fd, and where an idle
//! restart's time goes.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::{Load, LoadStats, Server, Summary, summarize};

use crate::{IMPLEMENTATIONS, Plan, Table, ms, start};

/// The rounds the floor and the idle and loaded restarts are taken in. Every
/// ratio of the table is given for the whole run and, beside it, as its range
/// over the rounds: how far the same ratio moves between shorter runs.
pub const ROUNDS: usize = 3;

/// A ratio over the whole run and its range over the rounds: `1.25 (1.20–1.31)`.
pub fn spread(whole: f64, rounds: impl IntoIterator<Item = f64>) -> String {
    let (low, high) = (rounds.into_iter()).fold((f64::INFINITY, 0.0_f64), |(low, high), r| {
        (low.min(r), high.max(r))
    });
    format!("{whole:.2} ({low:.2}–{high:.2})")
}

/// The median of `a`'s samples over the median of `b`'s.
pub fn ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let median = |samples: &[Duration]| summarize(samples.to_vec()).median.as_secs_f64();
    median(a) / median(b)
}

/// What one round measured: fresh starts of the floor, and per
/// implementation (in the order of [`IMPLEMENTATIONS`]) idle restarts taken
/// in turn with those starts, and restarts under load.
#[derive(Default)]
struct Round {
    floor: Vec<Duration>,
    idle: [Vec<Duration>; 2],
    loaded: [Vec<Duration>; 2],
}

/// The floor, and both implementations restarted idle and under load
/// (sections 1 to 4), round by round.
pub struct Latencies {
    rounds: Vec<Round>,
    /// Per implementation, what the keep-alive clients saw (answered,
    /// failed), and the connection-per-request ones.
    requests: [[(u64, u64); 2]; 2],
}

impl Latencies {
    /// The floor over the whole run.
    pub fn floor(&self) -> Summary {
        summarize(self.whole().floor)
    }

    /// The whole run as one round: every round's samples, pooled.
    fn whole(&self) -> Round {
        let mut whole = Round::default();
        for round in &self.rounds {
            whole.floor.extend(&round.floor);
            for i in 0..IMPLEMENTATIONS.len() {
                whole.idle[i].extend(&round.idle[i]);
                whole.loaded[i].extend(&round.loaded[i]);
            }
        }
        whole
    }
}

/// The floor (a fresh start of the same server until it answers, no restart
/// logic), and both implementations' restart latency idle and under load,
/// with the requests that failed meanwhile; their tables. Each round takes
/// its share of every kind of sample; the idle ones in turn (a fresh start,
/// a grestart restart, a shellflip restart, again), so that whatever the
/// machine does meanwhile weighs on all three alike.
pub fn latencies(table: &mut Table, binary: &Path, plan: &Plan) -> Latencies {
    let mut requests = [[(0, 0); 2]; 2];
    let rounds = (0..ROUNDS)
        .map(|_| {
            let mut servers = IMPLEMENTATIONS.map(|(name, _)| start(binary, name, 0));
            let (mut floor, mut idle) = (Vec::new(), [Vec::new(), Vec::new()]);
            for _ in 0..plan.samples / ROUNDS {
                let started = Instant::now();
                let fresh = start(binary, "plain", 0);
                floor.push(started.elapsed());
                fresh.stop();
                for ((server, (_, signal)), samples) in
                    servers.iter_mut().zip(IMPLEMENTATIONS).zip(&mut idle)
                {
                    samples.push(server.restart(signal).latency);
                }
            }
            for server in servers {
                server.stop();
            }
            let per_load = plan.restarts / 2 / ROUNDS;
            let mut loaded = [Vec::new(), Vec::new()];
            for (((name, signal), samples), counts) in IMPLEMENTATIONS
                .into_iter()
                .zip(&mut loaded)
                .zip(&mut requests)
            {
                for (clients, count) in [(8, 0), (0, 8)].into_iter().zip(counts.iter_mut()) {
                    let (latencies, stats) = restarts(binary, name, signal, per_load, clients);
                    samples.extend(latencies);
                    *count = (count.0 + stats.ok, count.1 + stats.failed);
                }
            }
            Round {
                floor,
                idle,
                loaded,
            }
        })
        .collect();
    let latencies = Latencies { rounds, requests };

    table.line(format!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "restart latency (ms)", "min", "median", "p99", "max"
    ));
    let row = |label: String, samples: Vec<Duration>| {
        let (count, s) = (samples.len(), summarize(samples));
        format!(
            "{:<34} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            format!("{label} ({count})"),
            ms(s.min),
            ms(s.median),
            ms(s.p99),
            ms(s.max)
        )
    };
    let whole = latencies.whole();
    table.line(row("fork+exec floor".into(), whole.floor));
    for (((name, _), idle), loaded) in IMPLEMENTATIONS
        .into_iter()
        .zip(whole.idle)
        .zip(whole.loaded)
    {
        table.line(row(format!("{name}, idle"), idle));
        table.line(row(format!("{name}, under load"), loaded));
    }
    table.line(String::new());
    table.line(format!(
        "{:<34} {:>12} {:>12}",
        "requests during restarts", "answered", "failed"
    ));
    for ((name, _), counts) in IMPLEMENTATIONS.into_iter().zip(&latencies.requests) {
        for (kind, (ok, failed)) in ["keep-alive", "connection per request"]
            .into_iter()
            .zip(counts)
        {
            table.line(format!(
                "{:<34} {:>12} {:>12}",
                format!("{name}, {kind}"),
                ok,
                failed
            ));
        }
    }
    latencies
}

/// Restart latencies of `count` restarts under `keep_alive` and `close`
/// clients, and what they saw.
fn restarts(
    binary: &Path,
    mode: &str,
    signal: i32,
    count: usize,
    (keep_alive, close): (usize, usize),
) -> (Vec<Duration>, LoadStats) {
    let mut server = start(binary, mode, 0);
    let load = Load::start(server.addr, keep_alive, close);
    let latencies = (0..count).map(|_| server.restart(signal).latency).collect();
    let stats = load.finish();
    server.stop();
    (latencies, stats)
}

/// Steady state (section 5): the library is not on the request path.
pub fn steady_state(table: &mut Table, binary: &Path, plan: &Plan) {
    let (windows, seconds) = plan.steady;
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for _ in 0..windows {
        plain.push(throughput(binary, "plain", seconds));
        with.push(throughput(binary, "grestart", seconds));
    }
    plain.sort_by(f64::total_cmp);
    with.sort_by(f64::total_cmp);
    let median = windows / 2;
    table.line(String::new());
    table.line(format!(
        "steady state (median of {windows} x {seconds} s), 8 keep-alive clients: plain {:.0} req/s, grestart {:.0} req/s, ratio {:.3}",
        plain[median],
        with[median],
        with[median] / plain[median]
    ));
}

/// Requests per second over `seconds` with 8 keep-alive clients.
fn throughput(binary: &Path, mode: &str, seconds: u64) -> f64 {
    let server = start(binary, mode, 0);
    let load = Load::start(server.addr, 8, 0);
    std::thread::sleep(Duration::from_secs(seconds)); // a measurement window, not synchronisation
    let stats = load.finish();
    server.stop();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    stats.ok as f64 / seconds as f64
}

/// Cost per handed-over fd (section 6): idle restarts with more and more
/// listeners.
pub fn per_fd(table: &mut Table, binary: &Path, plan: &Plan) {
    table.line(String::new());
    table.line(format!(
        "{:<34} {:>12}",
        "listeners handed over", "median (ms)"
    ));
    let mut by_count = Vec::new();
    for &listeners in plan.listeners {
        let mut server = start(binary, "grestart", listeners - 1);
        let samples: Vec<Duration> = (0..plan.per_listeners)
            .map(|_| server.restart(libc::SIGUSR2).latency)
            .collect();
        server.stop();
        let median = summarize(samples).median;
        by_count.push((listeners, median));
        table.line(format!("{listeners:<34} {:>12.2}", ms(median)));
    }
    let ((fewest, first), (most, last)) = (by_count[0], by_count[by_count.len() - 1]);
    let per_fd = (last.as_secs_f64() - first.as_secs_f64()) / (most - fewest) as f64;
    table.line(format!("cost per extra fd: {:.2} µs", per_fd * 1e6));
}

/// The idle and loaded medians of grestart against the floor and shellflip,
/// over the whole run and the range over its rounds.
pub fn ratios(table: &mut Table, latencies: &Latencies) {
    let whole = latencies.whole();
    let over = |pick: fn(&Round) -> f64| spread(pick(&whole), latencies.rounds.iter().map(pick));
    table.line(String::new());
    table.line(format!(
        "ratios of medians, whole run (range over its {ROUNDS} rounds): grestart idle / floor = {}, \
         grestart / shellflip idle = {}, under load = {}",
        over(|r| ratio(&r.idle[0], &r.floor)),
        over(|r| ratio(&r.idle[0], &r.idle[1])),
        over(|r| ratio(&r.loaded[0], &r.loaded[1])),
    ));
}

/// Where the rest of the idle restart goes, beyond the floor (section 7):
/// medians of idle restarts at 0 MB, from the signal to the parent's log line saying
/// the successor was spawned, the one saying it was ready, and the first
/// answer from it.
pub fn breakdown(table: &mut Table, binary: &Path, plan: &Plan, floor: &Summary) {
    let args = [OsStr::new("serve"), OsStr::new("grestart")];
    let mut server = Server::start(binary, &args, "127.0.0.1:0", &[("GRESTART_LOG", "debug")]);
    let (mut spawned, mut ready, mut answered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.medians {
        let restart = server.restart(libc::SIGUSR2);
        let wait = Duration::from_secs(10);
        spawned.push(server.wait_for_log_at("spawned with", wait).0 - restart.signalled);
        ready.push(server.wait_for_log_at("ready after", wait).0 - restart.signalled);
        answered.push(restart.latency);
    }
    server.stop();
    table.line(String::new());
    table.line(format!(
        "idle restart at 0 MB, from the signal (median of {}, debug log read times): spawned {:.2} ms, \
         successor ready {:.2} ms, first answer from it {:.2} ms (floor {:.2} ms)",
        plan.medians,
        ms(summarize(spawned).median),
        ms(summarize(ready).median),
        ms(summarize(answered).median),
        ms(floor.median)
    ));
}
