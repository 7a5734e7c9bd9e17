//! Restart latency, sections 1 to 7 of the table: the fork+exec floor,
//! grestart and shellflip restarted idle and under load (and what the load
//! saw), the steady state, the cost per handed-over fd, and where an idle
//! restart's time goes.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::{Load, LoadStats, Server, Summary, summarize};

use crate::{IMPLEMENTATIONS, Plan, Table, ms, start};

/// One implementation restarted idle and under load.
pub struct Restarts {
    name: &'static str,
    idle: Summary,
    loaded: Summary,
    /// What the keep-alive clients saw, and the connection-per-request ones.
    keep_alive: LoadStats,
    close: LoadStats,
}

/// The floor (section 1): fork + exec of the same server until it answers,
/// no restart logic.
pub fn floor(binary: &Path, plan: &Plan) -> Summary {
    let starts = (0..plan.samples)
        .map(|_| {
            let started = Instant::now();
            let server = start(binary, "plain", 0);
            let elapsed = started.elapsed();
            server.stop();
            elapsed
        })
        .collect();
    summarize(starts)
}

/// Restart latency without and with load, and failures, for both (sections 2
/// to 4); their tables.
pub fn under_load(table: &mut Table, binary: &Path, plan: &Plan, floor: &Summary) -> Vec<Restarts> {
    let (count, half) = (plan.restarts, plan.restarts / 2);
    let results: Vec<Restarts> = (IMPLEMENTATIONS.into_iter())
        .map(|(name, signal)| {
            let (idle, _) = restarts(binary, name, signal, plan.samples, None);
            let (keep_alive_latency, keep_alive) =
                restarts(binary, name, signal, half, Some((8, 0)));
            let (close_latency, close) = restarts(binary, name, signal, count - half, Some((0, 8)));
            let mut loaded = keep_alive_latency;
            loaded.extend(close_latency);
            Restarts {
                name,
                idle: summarize(idle),
                loaded: summarize(loaded),
                keep_alive,
                close,
            }
        })
        .collect();

    table.line(format!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "restart latency (ms)", "min", "median", "p99", "max"
    ));
    let row = |label: &str, s: &Summary| {
        format!(
            "{label:<34} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            ms(s.min),
            ms(s.median),
            ms(s.p99),
            ms(s.max)
        )
    };
    table.line(row(
        &format!("fork+exec floor ({} starts)", plan.samples),
        floor,
    ));
    for r in &results {
        table.line(row(
            &format!("{}, idle ({})", r.name, plan.samples),
            &r.idle,
        ));
        table.line(row(&format!("{}, under load ({count})", r.name), &r.loaded));
    }
    table.line(String::new());
    table.line(format!(
        "{:<34} {:>12} {:>12}",
        "requests during restarts", "answered", "failed"
    ));
    for r in &results {
        table.line(format!(
            "{:<34} {:>12} {:>12}",
            format!("{}, keep-alive", r.name),
            r.keep_alive.ok,
            r.keep_alive.failed
        ));
        table.line(format!(
            "{:<34} {:>12} {:>12}",
            format!("{}, connection per request", r.name),
            r.close.ok,
            r.close.failed
        ));
    }
    results
}

/// Restart latencies of `count` restarts, and what a concurrent load saw.
fn restarts(
    binary: &Path,
    mode: &str,
    signal: i32,
    count: usize,
    load: Option<(usize, usize)>,
) -> (Vec<Duration>, LoadStats) {
    let mut server = start(binary, mode, 0);
    let load = load.map(|(keep_alive, close)| Load::start(server.addr, keep_alive, close));
    let latencies = (0..count).map(|_| server.restart(signal).latency).collect();
    let stats = load.map(Load::finish).unwrap_or_default();
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

/// The idle and loaded medians of grestart against the floor and shellflip.
pub fn ratios(table: &mut Table, floor: &Summary, results: &[Restarts]) {
    let (grestart, shellflip) = (&results[0], &results[1]);
    table.line(String::new());
    table.line(format!(
        "ratios: grestart idle / floor = {:.2}, grestart / shellflip (idle median) = {:.2}, (loaded median) = {:.2}",
        grestart.idle.median.as_secs_f64() / floor.median.as_secs_f64(),
        grestart.idle.median.as_secs_f64() / shellflip.idle.median.as_secs_f64(),
        grestart.loaded.median.as_secs_f64() / shellflip.loaded.median.as_secs_f64(),
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
