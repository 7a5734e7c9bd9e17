//! `cargo bench --bench restart`: restart latency and correctness under load,
//! grestart side by side with cloudflare's shellflip, against the fork+exec floor.
//!
//! One binary plays every part. Run with `serve MODE ADDR [EXTRA]` it is the
//! server (`server.rs`): the same tokio HTTP/1.1 server (keep-alive, 200 +
//! `X-Pid` + `X-Generation`) in three modes that differ only in how the
//! listening socket is obtained and when the process drains:
//! - `plain`: binds it, never restarts (the floor and the throughput baseline);
//! - `grestart`: `grestart::listen_tcp`, restarts on SIGUSR2, plus EXTRA more
//!   listeners to measure the cost per handed-over fd;
//! - `shellflip`: binds it on a fresh start; on SIGUSR1 shellflip spawns the
//!   successor, and the listener's fd number travels through shellflip's
//!   hand-over pipe (`LifecycleHandler::send_to_new_process`, the state
//!   transfer its documentation describes), with close-on-exec cleared for it.
//!
//! Without arguments it is the benchmark: it drives those servers with the
//! load clients of the test suite (which count every failed request), prints
//! one table (`latency.rs`, `memory.rs`) and draws two pictures
//! (`timeline.rs`, `plot.rs`). Numbers are medians over many runs on whatever
//! machine runs it; the ratios are what carries over.
//! `GRESTART_BENCH_RESTARTS` (default 1200) sets the restarts under load per
//! implementation. `GRESTART_BENCH_QUICK=1` takes every step with a few
//! restarts each and heaps of megabytes, not gigabytes (under a minute): a
//! check that the benchmark runs, whose numbers mean little; it writes to
//! `target/bench/quick/`.

mod latency;
mod memory;
mod plot;
mod server;
mod svg;
mod timeline;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::Path;

use testkit::Server;

/// The implementations compared, each with its restart signal.
const IMPLEMENTATIONS: [(&str, i32); 2] =
    [("grestart", libc::SIGUSR2), ("shellflip", libc::SIGUSR1)];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") && args.len() == 4 {
        let extra = std::env::var("GRESTART_BENCH_EXTRA")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if let Err(e) = server::serve(&args[2], &args[3], extra) {
            eprintln!("bench server: {e}");
            std::process::exit(1);
        }
    } else if args.iter().any(|a| a == "--bench") {
        benchmark(&Plan::from_env());
    } else {
        // `cargo test --all-targets` builds and runs this too: building is the check.
        println!("restart benchmark: run it with `cargo bench --bench restart`");
    }
}

/// How much the benchmark measures.
struct Plan {
    /// Restarts under load per implementation, half of them under keep-alive
    /// clients, half under connection-per-request ones; a share in each of
    /// the [`latency::ROUNDS`].
    restarts: usize,
    /// Fresh starts of the floor, and idle restarts per implementation; a
    /// share in each round.
    samples: usize,
    /// Steady-state windows per mode, and their length in seconds.
    steady: (usize, u64),
    /// The listener counts of the cost per fd, and idle restarts at each.
    listeners: &'static [usize],
    per_listeners: usize,
    /// Idle restarts per median of the breakdown and of each heap size (a
    /// share in each round).
    medians: usize,
    /// The heap sizes (MB) of the memory rows: none, medium, large.
    sizes: [usize; 3],
    /// Restarts per size for the slowest requests, and kills of the baseline.
    slowest: usize,
    /// What is streamed through the caches to cool them before a restart (MB).
    cache_mb: usize,
    /// Where the table and the pictures go, under the repository.
    out: &'static str,
}

impl Plan {
    fn from_env() -> Plan {
        let quick = std::env::var_os("GRESTART_BENCH_QUICK").is_some_and(|v| v == "1");
        let mut plan = if quick {
            Plan {
                restarts: 6,
                samples: 6,
                steady: (1, 1),
                listeners: &[1, 10],
                per_listeners: 3,
                medians: 3,
                sizes: [0, 16, 64],
                slowest: 2,
                cache_mb: 64,
                out: "target/bench/quick",
            }
        } else {
            Plan {
                restarts: 1200,
                samples: 90,
                steady: (5, 2),
                listeners: &[1, 10, 100, 1000],
                per_listeners: 20,
                medians: 18,
                sizes: [0, 1024, 4096],
                slowest: 10,
                cache_mb: 256,
                out: "target/bench",
            }
        };
        if let Some(n) = std::env::var("GRESTART_BENCH_RESTARTS")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            plan.restarts = n;
        }
        plan
    }
}

/// The table: printed as it grows, and kept for `restart-table.txt`.
#[derive(Default)]
struct Table(String);

impl Table {
    fn line(&mut self, text: String) {
        println!("{text}");
        let _ = writeln!(self.0, "{text}");
    }
}

fn benchmark(plan: &Plan) {
    testkit::become_subreaper();
    let binary = std::env::current_exe().expect("current_exe");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "grestart restart benchmark: {cores} cores, {} restarts under load per implementation\n",
        plan.restarts
    );
    let mut table = Table::default();
    let t = &mut table;
    let latencies = section("restarts", || latency::latencies(t, &binary, plan));
    let floor = latencies.floor();
    section("steady state", || latency::steady_state(t, &binary, plan));
    section("cost per fd", || latency::per_fd(t, &binary, plan));
    latency::ratios(t, &latencies);
    section("breakdown", || latency::breakdown(t, &binary, plan, &floor));
    // The timelines before the gigabytes: the kernel is still reclaiming for a
    // while after them, which showed as a stall in a picture drawn afterwards.
    let (with, without) = section("timelines", || timeline::timelines(&binary));
    let by_size = section("memory", || memory::report(t, &binary, plan, &floor));

    let out = testkit::repo().join(plan.out);
    std::fs::create_dir_all(&out).expect("create the output directory");
    let memory_svg = plot::memory_chart(plan, &by_size, floor.median);
    std::fs::write(out.join("restart-memory.svg"), memory_svg).expect("write the plot");
    let timeline_svg = plot::timeline_chart(&with, &without);
    std::fs::write(out.join("restart-timeline.svg"), timeline_svg).expect("write the plot");
    std::fs::write(out.join("restart-table.txt"), &table.0).expect("write the table");
    let dir = plan.out;
    println!(
        "\nwrote {dir}/restart-memory.svg, {dir}/restart-timeline.svg and {dir}/restart-table.txt"
    );
}

/// Runs one section of the benchmark and says how long it took (on stderr,
/// beside the table): where the run's minutes go.
fn section<T>(name: &str, run: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let result = run();
    eprintln!("[{name}: {:.0} s]", started.elapsed().as_secs_f64());
    result
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The bench server in `mode`, with `extra` listeners more (grestart).
fn start(binary: &Path, mode: &str, extra: usize) -> Server {
    let extra = extra.to_string();
    let args = [OsStr::new("serve"), OsStr::new(mode)];
    Server::start(
        binary,
        &args,
        "127.0.0.1:0",
        &[("GRESTART_BENCH_EXTRA", &extra)],
    )
}
