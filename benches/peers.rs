//! `cargo bench --bench peers`: grestart beside what a user would pick
//! instead to restart a server without losing requests, in one run and under
//! the same load: grestart's C and Python examples, shellflip, nginx's binary
//! upgrade, HAProxy's master-worker reload, gunicorn's re-exec, and a plain
//! stop-and-start under systemd socket activation (the baseline without any
//! graceful restart library). Each peer is configured as its own
//! documentation says for a reload that loses nothing (`peers/masters.rs`,
//! `peers/socket_unit.rs` name the pages).
//!
//! For each peer, `GRESTART_BENCH_RESTARTS` (default 20) restarts under
//! keep-alive clients, then as many under connection-per-request clients
//! (`peers/load.rs`, 4 clients either way). The restart latency is the
//! signal (or `systemctl restart`) to the first answer on a fresh connection
//! from the new generation, told apart by the `X-Pid` its processes answer
//! with; the clients count failed requests, and connections reset by the
//! server apart. Prints one table and draws `peers.svg` into `target/bench/`
//! (copied to `docs/`). `GRESTART_BENCH_QUICK=1`: 3 restarts each, into
//! `target/bench/quick/`; `GRESTART_BENCH_PEERS=nginx,gunicorn` measures
//! only the peers whose names contain one of those words.
//!
//! Needs what `scripts/test` installs: nginx-light, haproxy, systemd and
//! systemd-container, and the virtualenv of `scripts/python-venv` (gunicorn).
//! Run with `serve shellflip ADDR` the binary is the shellflip server of
//! `cargo bench --bench restart` (`restart/server.rs`, shared).

#[path = "peers/load.rs"]
mod load;
#[path = "peers/masters.rs"]
mod masters;
#[path = "restart/server.rs"]
mod server;
#[path = "peers/socket_unit.rs"]
mod socket_unit;
#[path = "restart/svg.rs"]
mod svg;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{Server, TempDir, children, kill, pidfd, reap, summarize, wait_exit};

/// Clients of the load, of one kind at a time.
const CLIENTS: usize = 4;

/// A server that restarts, however it does.
trait Peer {
    fn addr(&self) -> SocketAddr;
    /// Restarts it once and waits until the old generation has gone; returns
    /// the restart latency.
    fn restart(&mut self) -> Duration;
}

/// How to start a peer.
type Start<'a> = Box<dyn Fn() -> Box<dyn Peer> + 'a>;

/// A server that restarts itself in place on a signal (grestart, shellflip):
/// `testkit::Server` follows its generations by the `X-Pid` they answer with.
struct InPlace {
    server: Server,
    signal: i32,
}

impl Peer for InPlace {
    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn restart(&mut self) -> Duration {
        self.server.restart(self.signal).latency
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "serve" && args[2] == "shellflip" {
        if let Err(e) = server::serve("shellflip", &args[3], 0) {
            eprintln!("bench server: {e}");
            std::process::exit(1);
        }
    } else if args.iter().any(|a| a == "--bench") {
        benchmark();
    } else {
        // `cargo test --all-targets` builds and runs this too: building is the check.
        println!("peers benchmark: run it with `cargo bench --bench peers`");
    }
}

/// One row of the table: a peer under one kind of load.
struct Row {
    peer: &'static str,
    keep_alive: bool,
    latencies: Vec<Duration>,
    counts: load::Counts,
}

fn benchmark() {
    testkit::become_subreaper();
    let quick = std::env::var_os("GRESTART_BENCH_QUICK").is_some_and(|v| v == "1");
    let restarts: usize = std::env::var("GRESTART_BENCH_RESTARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 3 } else { 20 });
    let only = std::env::var("GRESTART_BENCH_PEERS").unwrap_or_default();
    let wanted = |name: &str| {
        only.is_empty()
            || (only.split(',')).any(|w| name.to_lowercase().contains(&w.to_lowercase()))
    };
    let build = TempDir::new("bench-peers");
    let c_example = build.join("http_server");
    testkit::build_c_example(&c_example, 1);
    let shellflip_server = std::env::current_exe().expect("current_exe");

    let starts: [(&'static str, Start<'_>); 7] = [
        (
            "grestart, C example",
            Box::new(|| {
                let mut command = Command::new(&c_example);
                command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
                in_place(command, libc::SIGUSR2)
            }),
        ),
        (
            "grestart, Python example (threads)",
            Box::new(|| {
                let mut command = testkit::python_example("http_server.py");
                command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
                in_place(command, libc::SIGUSR2)
            }),
        ),
        (
            "shellflip (Rust, tokio)",
            Box::new(|| {
                let mut command = Command::new(&shellflip_server);
                command.args([OsStr::new("serve"), OsStr::new("shellflip")]);
                command.arg("127.0.0.1:0");
                in_place(command, libc::SIGUSR1)
            }),
        ),
        (
            "nginx binary upgrade",
            Box::new(|| Box::new(masters::Nginx::start())),
        ),
        (
            "HAProxy -W reload",
            Box::new(|| Box::new(masters::Haproxy::start())),
        ),
        (
            "gunicorn USR2 + TERM",
            Box::new(|| Box::new(masters::Gunicorn::start())),
        ),
        (
            "systemd socket unit, restart",
            Box::new(|| Box::new(socket_unit::SocketUnit::start())),
        ),
    ];

    println!(
        "peers benchmark: {restarts} restarts per peer under each load ({CLIENTS} keep-alive, then {CLIENTS} connection-per-request clients)\n"
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    for (name, start) in &starts {
        if !wanted(name) {
            continue;
        }
        let mut peer = start();
        for keep_alive in [true, false] {
            let row = measure(name, peer.as_mut(), restarts, keep_alive);
            println!("{}", line(&row));
            for e in &row.counts.examples {
                println!("    e.g. {e}");
            }
            rows.push(row);
        }
    }
    let mut table = format!(
        "{restarts} restarts per peer under each load ({CLIENTS} clients); latency: signal to the first answer from the new generation on a fresh connection\n\n\
         | peer | load | latency median | latency max | answered | failed | reset by the server |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for row in &rows {
        let _ = writeln!(table, "{}", line(row));
    }
    let _ = writeln!(
        table,
        "\n(the whole run: {:.0} s)",
        started.elapsed().as_secs_f64()
    );
    println!("\n{table}");
    let out = testkit::repo().join(if quick {
        "target/bench/quick"
    } else {
        "target/bench"
    });
    std::fs::create_dir_all(&out).expect("create the output directory");
    std::fs::write(out.join("peers-table.txt"), &table).expect("write the table");
    std::fs::write(out.join("peers.svg"), chart(&rows, restarts)).expect("write the plot");
    println!(
        "wrote {0}/peers-table.txt and {0}/peers.svg",
        out.strip_prefix(testkit::repo()).unwrap_or(&out).display()
    );
}

/// Each restart's latency, one line per peer, in a panel per kind of load;
/// the legend gives each peer's median and what its clients lost.
fn chart(rows: &[Row], restarts: usize) -> String {
    const COLORS: [&str; 7] = [
        "steelblue",
        "darkorange",
        "seagreen",
        "crimson",
        "purple",
        "saddlebrown",
        "gray",
    ];
    // Latencies a hundred times apart: a log scale from 1 ms.
    let mut svg = svg::Svg::new(900.0, 840.0, Some(1.0));
    for (top, keep_alive) in [(0.0, true), (420.0, false)] {
        let panel: Vec<&Row> = rows.iter().filter(|r| r.keep_alive == keep_alive).collect();
        let legends: Vec<String> = (panel.iter())
            .map(|r| {
                format!(
                    "{}: median {:.1} ms, failed {}, reset {}",
                    r.peer,
                    ms(summarize(r.latencies.clone()).median),
                    r.counts.failed,
                    r.counts.reset
                )
            })
            .collect();
        let series: Vec<svg::Series<'_>> = (panel.iter().zip(&legends).zip(COLORS.iter().cycle()))
            .map(|((r, legend), color)| {
                let points = (r.latencies.iter().enumerate())
                    .map(|(i, &l)| ((i + 1) as f64, ms(l)))
                    .collect();
                (legend.as_str(), *color, points)
            })
            .collect();
        // A decade of headroom above the lines for the legend.
        let highest = (series.iter().flat_map(|s| &s.2).map(|p| p.1)).fold(1.0, f64::max);
        let ceiling = 10f64.powf(highest.log10().ceil() + 1.0);
        let load = if keep_alive {
            "keep-alive clients"
        } else {
            "connection-per-request clients"
        };
        svg.panel(
            top,
            420.0,
            &format!("restart latency under {CLIENTS} {load}"),
            ("restart", restarts as f64),
            ("signal to the new generation's first answer (ms)", ceiling),
            &series,
            &[],
        );
    }
    svg.finish()
}

fn in_place(command: Command, signal: i32) -> Box<dyn Peer> {
    Box::new(InPlace {
        server: Server::launch(command),
        signal,
    })
}

/// `restarts` restarts of `peer` under one kind of load, a moment apart so
/// that each begins under the steady load.
fn measure(name: &'static str, peer: &mut dyn Peer, restarts: usize, keep_alive: bool) -> Row {
    let load = load::Load::start(peer.addr(), CLIENTS, keep_alive);
    thread::sleep(Duration::from_millis(200));
    let latencies = (0..restarts)
        .map(|_| {
            let latency = peer.restart();
            thread::sleep(Duration::from_millis(50));
            latency
        })
        .collect();
    Row {
        peer: name,
        keep_alive,
        latencies,
        counts: load.finish(),
    }
}

fn line(row: &Row) -> String {
    let summary = summarize(row.latencies.clone());
    format!(
        "| {} | {} | {:.1} ms | {:.1} ms | {} | {} | {} |",
        row.peer,
        if row.keep_alive {
            "keep-alive"
        } else {
            "connection per request"
        },
        ms(summary.median),
        ms(summary.max),
        row.counts.ok,
        row.counts.failed,
        row.counts.reset
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Probes `addr` with fresh connections until a process that is not one of
/// `old` answers: the time since `since`, and that process's pid. `log`, if
/// any, is shown when nothing new answers within 30 s.
fn first_answer_from(
    addr: SocketAddr,
    old: &[i32],
    since: Instant,
    log: Option<&Path>,
) -> (Duration, i32) {
    let deadline = since + Duration::from_secs(30);
    loop {
        let answer = testkit::get(addr, true);
        if let Ok(response) = &answer {
            if !old.contains(&response.pid) {
                return (since.elapsed(), response.pid);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new generation answers on {addr} (last: {answer:?}):\n{}",
            log.map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .unwrap_or_default()
        );
        thread::yield_now();
    }
}

/// Kills `pid` and every descendant of it, and reaps them: a master first,
/// so that its workers become ours (we are their subreaper) to reap.
fn stop_tree(pid: i32) {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children(tree[i], false));
        i += 1;
    }
    for pid in tree {
        if let Ok(exit) = pidfd(pid) {
            kill(pid, libc::SIGKILL);
            wait_exit(&exit, Duration::from_secs(5));
            reap(pid);
        }
    }
}

/// Waits until `path` holds `count` lines containing `needle`. A log file
/// offers no event to wait for: polled, bounded by `timeout`.
fn wait_for_file_line(path: &Path, needle: &str, count: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} did not appear {count} times in {}:\n{text}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}
