//! Restart cost against the memory a server holds: idle restarts of servers
//! of each size in turn, and the slowest keep-alive request during restarts
//! at the smallest and the largest size, beside the slowest while another
//! process of that size exits without a restart; restarts the host paused
//! (steal time) are counted apart.

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::{Load, Server, Summary, summarize};

use crate::latency::{self, ROUNDS};
use crate::{IMPLEMENTATIONS, Plan, Table, ms, section, start};

/// Restart cost against the server's memory (section 8 of the table); the
/// summaries per implementation and size, for the picture.
pub fn report(
    table: &mut Table,
    binary: &Path,
    plan: &Plan,
    floor: &Summary,
) -> Vec<(&'static str, Vec<Summary>)> {
    let [small, middle, large] = plan.sizes;
    let ratio = format!(
        "{}/{}",
        size(large).replace(' ', ""),
        size(small).replace(' ', "")
    );
    table.line(String::new());
    table.line(format!(
        "{:<34} {:>10} {:>10} {:>10} {:>10}",
        format!("idle restart ({}, sizes in turn)", plan.medians),
        size(small),
        size(middle),
        size(large),
        ratio
    ));
    let mut by_size: Vec<(&str, Vec<Summary>)> = Vec::new();
    let mut spreads = Vec::new();
    for (name, signal) in IMPLEMENTATIONS {
        let latencies = section(&format!("memory: {name} idle"), || {
            interleaved_restarts(binary, plan, name, signal)
        });
        let (first, last) = (&latencies[0], &latencies[latencies.len() - 1]);
        let per_round = plan.medians / ROUNDS;
        let rounds = (first
            .chunks_exact(per_round)
            .zip(last.chunks_exact(per_round)))
        .map(|(small, large)| latency::ratio(large, small));
        spreads.push(format!(
            "{name} {}",
            latency::spread(latency::ratio(last, first), rounds)
        ));
        by_size.push((name, latencies.into_iter().map(summarize).collect()));
    }
    for (name, summaries) in &by_size {
        for (label, pick) in [("median", 0), ("p99", 1)] {
            let values: Vec<f64> = (summaries.iter())
                .map(|s| ms(if pick == 0 { s.median } else { s.p99 }))
                .collect();
            table.line(format!(
                "{:<34} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                format!("{name}, {label} (ms)"),
                values[0],
                values[1],
                values[2],
                values[2] / values[0]
            ));
        }
    }
    table.line(format!(
        "{:<34} {:>10.2} {:>10.2} {:>10.2} {:>10}",
        "fork+exec floor, median (ms)",
        ms(floor.median),
        ms(floor.median),
        ms(floor.median),
        "(a fresh start)"
    ));
    table.line(format!(
        "{ratio} of medians (range over {ROUNDS} rounds of {}): {}",
        plan.medians / ROUNDS,
        spreads.join(", ")
    ));
    table.line(String::new());
    let count = plan.slowest;
    table.line(format!(
        "{:<48} {:>8} {:>8} {:>8}",
        format!("slowest keep-alive request, {count} restarts (ms)"),
        size(small),
        size(large),
        ratio
    ));
    let mut paused = Vec::new();
    for (name, signal) in IMPLEMENTATIONS {
        let [at_small, at_large] = section(&format!("memory: {name} slowest"), || {
            [small, large].map(|mb| slowest_during_restarts(binary, plan, name, signal, mb, 4))
        });
        let slowest = |s: &Slowest| s.in_paused.map_or("-".into(), |d| format!("{:.1}", ms(d)));
        paused.push(format!(
            "{name} {} and {} of {count} (slowest in them {} and {} ms)",
            at_small.paused,
            at_large.paused,
            slowest(&at_small),
            slowest(&at_large)
        ));
        let windows = [
            "to the successor's first answer",
            "to the old generation's exit",
            "the first second from the signal",
        ];
        let (at_small, at_large) = (at_small.figures(), at_large.figures());
        for (i, window) in windows.into_iter().enumerate() {
            let cell = |f: Option<Duration>| f.map_or("-".into(), |d| format!("{:.2}", ms(d)));
            let ratio = (at_small[i].zip(at_large[i]))
                .map_or("-".into(), |(s, l)| format!("{:.2}", ms(l) / ms(s)));
            table.line(format!(
                "{:<48} {:>8} {:>8} {:>8}",
                format!("{name}, {window}"),
                cell(at_small[i]),
                cell(at_large[i]),
                ratio
            ));
        }
    }
    let exit = section("memory: exits", || {
        slowest_while_one_exits(binary, plan, large, 4)
    });
    table.line(format!(
        "{:<48} {:>8} {:>8.2}",
        format!("no restart, 1 s from killing another {} one", size(large)),
        "-",
        ms(exit)
    ));
    table.line(format!(
        "restarts the host paused (>= {} ms of steal in /proc/stat; left out above), at {} and {}: {}",
        HOST_PAUSE.as_millis(),
        size(small),
        size(large),
        paused.join(", ")
    ));
    by_size
}

/// A heap size as the table labels it: `0 MB`, `4 GB`.
fn size(mb: usize) -> String {
    if mb >= 1024 && mb % 1024 == 0 {
        format!("{} GB", mb / 1024)
    } else {
        format!("{mb} MB")
    }
}

/// Makes the serving generation hold `mb` MB more and waits until it does.
fn grow(server: &Server, mb: usize) {
    if mb == 0 {
        return;
    }
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(server.addr).expect("connect to grow the heap");
    write!(
        stream,
        "GET /heap/{mb} HTTP/1.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let _ = stream.read_to_end(&mut Vec::new());
    server.wait_for_log(
        &format!("heap of {mb} MB touched"),
        Duration::from_secs(300),
    );
}

/// Streams the plan's `cache_mb` (1 GB) through the caches in a throwaway
/// process. Growing a server's heap does that too, so without this the 0 MB
/// restarts would be measured with warm caches and the others with cold ones
/// (measured here: 1.42 ms warm, 1.88 ms cold for the same 0 MB server).
fn cool_caches(binary: &Path, plan: &Plan) {
    let hog = start(binary, "plain", 0);
    grow(&hog, plan.cache_mb);
    hog.stop();
}

/// `plan.medians` idle restarts of one server per size of the plan (MB held
/// by every generation), taken in turn so that whatever the machine does
/// meanwhile weighs on every size alike, each size first as often as the
/// others; each from cold caches. Latencies per size.
fn interleaved_restarts(binary: &Path, plan: &Plan, mode: &str, signal: i32) -> Vec<Vec<Duration>> {
    let sizes = &plan.sizes;
    let mut servers: Vec<Server> = (sizes.iter())
        .map(|&mb| {
            let server = start(binary, mode, 0);
            grow(&server, mb);
            server
        })
        .collect();
    let mut latencies = vec![Vec::new(); sizes.len()];
    for round in 0..plan.medians {
        // Each size in turn comes first, so that none always follows the
        // growth of the largest heap and its predecessor's exit.
        for i in (0..sizes.len()).map(|i| (i + round) % sizes.len()) {
            cool_caches(binary, plan);
            latencies[i].push(servers[i].restart(signal).latency);
            grow(&servers[i], sizes[i]);
        }
    }
    for server in servers {
        server.stop();
    }
    latencies
}

/// What the keep-alive clients saw across the restarts the host did not
/// pause (`None`: it paused them all): the slowest request that started
/// between the signal and the successor's first answer, the old generation's
/// exit, and the end of the [`STRETCH`]; and how many it paused, with the
/// slowest request of their windows.
struct Slowest {
    to_first_answer: Option<Duration>,
    to_old_exit: Option<Duration>,
    first_second: Option<Duration>,
    paused: usize,
    in_paused: Option<Duration>,
}

impl Slowest {
    /// The table's three rows.
    fn figures(&self) -> [Option<Duration>; 3] {
        [self.to_first_answer, self.to_old_exit, self.first_second]
    }
}

/// CPU time the hypervisor may take from this machine during one restart
/// before the restart counts as paused by the host. On a virtual machine
/// freeing or touching gigabytes makes the host work on guest memory (free
/// page reporting, first-touch faults), and every virtual CPU stalls for tens
/// of milliseconds at once: the guest sees it as steal time, whatever process
/// freed the memory.
const HOST_PAUSE: Duration = Duration::from_millis(20);

/// CPU time stolen from this machine by the hypervisor so far, all CPUs
/// together (`steal` in `/proc/stat`; zero on bare metal).
fn stolen() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let steal: u64 = (stat.lines().next())
        .and_then(|cpu| cpu.split_whitespace().nth(8))
        .and_then(|ticks| ticks.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(steal * 1000 / per_second)
}

/// What every restart is also measured over, whatever its size: the first
/// second from the signal. The slowest of more requests is slower, even on an
/// idle machine, so the restarts of a 0 MB server (3 ms to the old
/// generation's exit) and of a 4 GB one (450 ms: the kernel frees its memory)
/// are compared over the same stretch here.
const STRETCH: Duration = Duration::from_secs(1);

/// Whether the host took [`HOST_PAUSE`] or more since `stolen_before`, read
/// 100 ms after `until`, once the requests that started before it ended: a
/// pause can begin at the very end of a window and stall a request that
/// started in it for fifty.
fn host_paused(stolen_before: Duration, until: Instant) -> bool {
    let read = until + Duration::from_millis(100);
    std::thread::sleep(read.saturating_duration_since(Instant::now())); // a measurement window, not synchronisation
    stolen() - stolen_before >= HOST_PAUSE
}

/// `plan.slowest` restarts of a server whose every generation holds `mb` MB,
/// each from cold caches, under `keep_alive` clients: the slowest requests.
/// The heap is grown between restarts, never during one.
fn slowest_during_restarts(
    binary: &Path,
    plan: &Plan,
    mode: &str,
    signal: i32,
    mb: usize,
    keep_alive: usize,
) -> Slowest {
    let mut server = start(binary, mode, 0);
    grow(&server, mb);
    let load = Load::start(server.addr, keep_alive, 0);
    let mut windows = Vec::new();
    for _ in 0..plan.slowest {
        cool_caches(binary, plan);
        let stolen_before = stolen();
        let restart = server.restart(signal);
        let from = restart.signalled - load.started;
        let old_exit = load.started.elapsed();
        windows.push(Window {
            from,
            first_answer: from + restart.latency,
            old_exit,
            paused: host_paused(stolen_before, restart.signalled + STRETCH),
        });
        grow(&server, mb);
    }
    let stats = load.finish();
    server.stop();
    assert_eq!(stats.failed, 0, "{mode} at {mb} MB: {:?}", stats.failures);
    let worst = |to: fn(&Window) -> Duration, paused: bool| {
        (windows.iter())
            .filter(|w| w.paused == paused)
            .map(|w| stats.slowest_keep_alive_between(w.from, to(w)))
            .max()
    };
    Slowest {
        to_first_answer: worst(|w| w.first_answer, false),
        to_old_exit: worst(|w| w.old_exit, false),
        first_second: worst(|w| w.from + STRETCH, false),
        paused: windows.iter().filter(|w| w.paused).count(),
        in_paused: worst(|w| w.from + STRETCH, true),
    }
}

/// One restart, in offsets from the start of the load.
struct Window {
    from: Duration,
    first_answer: Duration,
    old_exit: Duration,
    /// The host took [`HOST_PAUSE`] or more meanwhile.
    paused: bool,
}

/// The baseline of the 4 GB row: no restart, a warm server at 0 MB under
/// `keep_alive` clients while `plan.slowest` times another process of `mb` MB
/// is killed beside it. The slowest request in the [`STRETCH`] from the kill
/// (the kernel freeing its memory), over the kills the host did not pause.
fn slowest_while_one_exits(binary: &Path, plan: &Plan, mb: usize, keep_alive: usize) -> Duration {
    let server = start(binary, "plain", 0);
    let load = Load::start(server.addr, keep_alive, 0);
    let mut windows = Vec::new();
    for _ in 0..plan.slowest {
        let other = start(binary, "plain", 0);
        grow(&other, mb);
        let stolen_before = stolen();
        let (killed, from) = (Instant::now(), load.started.elapsed());
        other.stop();
        if !host_paused(stolen_before, killed + STRETCH) {
            windows.push(from);
        }
    }
    let stats = load.finish();
    server.stop();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    (windows.iter())
        .map(|&from| stats.slowest_keep_alive_between(from, from + STRETCH))
        .max()
        .unwrap_or_default()
}
