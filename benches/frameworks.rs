//! `cargo bench --bench frameworks`: every example server (C, C++ and Rust
//! `http_server`, Python's thread-per-connection `http_server.py`, axum,
//! Asio, aiohttp, uvicorn) restarted `GRESTART_BENCH_RESTARTS` (default 20)
//! times idle, as many under wrk's keep-alive load and as many under its
//! connection-per-request load (32 connections each); it prints each one's
//! restart latency, its ratio to the C example's under the same load
//! (target: at most 2) and the requests that failed. For the Python servers
//! it also prints what the interpreter and the framework's own import cost,
//! and what grestart adds to a restart beyond what a plain start of the same
//! application costs: its import and its adapter's, the example's own set-up
//! and the hand-over itself (target: at most 3 ms).
//! `GRESTART_BENCH_ONLY=python` runs only that comparison (under a minute).
//!
//! Needs what `scripts/test` installs: wrk, libasio-dev and the virtualenv of
//! `scripts/python-venv`. Writes `target/bench/frameworks-table.txt` (only
//! the comparison: `target/bench/frameworks-python-table.txt`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Leaving, Server, Summary, TempDir, summarize};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs this too: building is the check.
        println!("frameworks benchmark: run it with `cargo bench --bench frameworks`");
        return;
    }
    testkit::become_subreaper();
    compile_python_package();
    let out = testkit::repo().join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    if std::env::var_os("GRESTART_BENCH_ONLY").is_some_and(|only| only == "python") {
        let table = python_comparison();
        println!("\n{table}");
        std::fs::write(out.join("frameworks-python-table.txt"), &table).expect("write the table");
        return;
    }
    let restarts: usize = std::env::var("GRESTART_BENCH_RESTARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let dir = TempDir::new("bench-frameworks");
    let c = dir.join("http_server");
    testkit::build_c_example(&c, 1);
    let cpp = dir.join("http_server_cpp");
    testkit::build_cpp_example(&cpp, 1);
    let rust = dir.join("http_server_rust");
    testkit::build_rust_example("http_server", &[], &rust, 1);
    let axum = dir.join("axum_server");
    testkit::build_rust_example("axum_server", &["axum"], &axum, 1);
    let asio = dir.join("asio_server");
    testkit::build_asio_example(&asio, 1);
    let binary = |path: &std::path::Path| {
        let mut command = Command::new(path);
        command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
        command
    };
    // The C example first: every other row is a ratio to it.
    let servers = [
        ("C (poll loop)", binary(&c)),
        ("C++ (thread per connection)", binary(&cpp)),
        ("Rust (thread per connection)", binary(&rust)),
        (
            "Python http.server (thread per connection)",
            python_server("http_server.py"),
        ),
        ("axum (tokio)", binary(&axum)),
        ("Asio (C++)", binary(&asio)),
        ("aiohttp", python_server("aiohttp_server.py")),
        ("uvicorn", python_server("uvicorn_server.py")),
    ];

    let mut table = format!(
        "Restart latency, signal to the successor's first answer on a fresh connection: median \
         (p99) of {restarts} restarts per server and load; × C: the median over the C example's \
         under the same load (target: at most 2). Load: wrk -t2 -c32, keep-alive or with \
         `Connection: close` (a connection per request); failed: wrk's socket errors and \
         non-2xx answers.\n\n\
         | server | idle | keep-alive | × C | connection per request | × C | requests | failed |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let mut c_medians = None;
    for (name, command) in servers {
        let [idle, keep_alive, per_request] = measure(command, restarts);
        let (c_keep_alive, c_per_request) =
            *c_medians.get_or_insert((keep_alive.latency.median, per_request.latency.median));
        let ratio = |d: Duration, c: Duration| d.as_secs_f64() / c.as_secs_f64();
        let _ = writeln!(
            table,
            "| {name} | {} | {} | {:.1} | {} | {:.1} | {} | {} |",
            spread(&idle.latency),
            spread(&keep_alive.latency),
            ratio(keep_alive.latency.median, c_keep_alive),
            spread(&per_request.latency),
            ratio(per_request.latency.median, c_per_request),
            keep_alive.answered + per_request.answered,
            keep_alive.failed + per_request.failed,
        );
        println!("{name}: done");
    }

    table.push('\n');
    table.push_str(&python_comparison());
    println!("\n{table}");
    std::fs::write(out.join("frameworks-table.txt"), &table).expect("write the table");
}

/// What one server's restarts under one load gave.
struct Restarts {
    latency: Summary,
    answered: u64,
    failed: u64,
}

/// `restarts` restarts of the server `command` starts: idle, under wrk's
/// keep-alive load, under wrk's connection-per-request load.
fn measure(command: Command, restarts: usize) -> [Restarts; 3] {
    let mut server = Server::launch(command);
    let mut under = |load: Option<&[&str]>| {
        let wrk = load.map(|extra| Wrk::start(server.addr, extra));
        let latencies = (0..restarts)
            .map(|_| server.restart(libc::SIGUSR2).latency)
            .collect();
        let (answered, failed) = wrk.map_or((0, 0), Wrk::finish);
        Restarts {
            latency: summarize(latencies),
            answered,
            failed,
        }
    };
    let measured = [
        under(None),
        under(Some(&[])),
        under(Some(&["-H", "Connection: close"])),
    ];
    server.stop();
    measured
}

/// wrk hammering a server with 32 connections on 2 threads until finished.
struct Wrk(Child);

impl Wrk {
    fn start(addr: SocketAddr, extra: &[&str]) -> Wrk {
        let child = Command::new("wrk")
            .args(["-t2", "-c32", "-d600s"])
            .args(extra)
            .arg(format!("http://{addr}/"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("wrk (scripts/test installs it)");
        // Every connection open and busy before the first restart.
        std::thread::sleep(Duration::from_millis(500));
        Wrk(child)
    }

    /// Stops wrk (SIGINT: it prints its summary) and reads from it the
    /// requests answered and those that failed.
    fn finish(self) -> (u64, u64) {
        testkit::kill(self.0.id() as i32, libc::SIGINT);
        let out = self.0.wait_with_output().expect("wrk's summary");
        let out = String::from_utf8_lossy(&out.stdout);
        let numbers = |line: &str| -> Vec<u64> {
            line.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        let line = |needle: &str| out.lines().find(|l| l.contains(needle));
        let requests = line("requests in").map_or(0, |l| numbers(l)[0]);
        // "Socket errors: connect 0, read 0, write 0, timeout 0"; "Non-2xx or 3xx responses: 0"
        let errors: u64 = line("Socket errors").map_or(0, |l| numbers(l).iter().sum());
        let non_2xx = line("Non-2xx").map_or(0, |l| numbers(l).last().copied().unwrap_or(0));
        assert!(requests > 0, "wrk got no answer:\n{out}");
        if errors + non_2xx > 0 {
            // Which kind failed: a table's count alone cannot tell a refused
            // connection from a reset one, a timeout or an error status.
            let said = ["Socket errors", "Non-2xx"].map(|needle| line(needle).unwrap_or(""));
            eprintln!("wrk: {}", said.join(" ").trim());
        }
        (requests - non_2xx, errors + non_2xx)
    }
}

/// "median ms (p99)".
fn spread(latency: &Summary) -> String {
    format!("{:.1} ms ({:.1})", ms(latency.median), ms(latency.p99))
}

/// `python examples/python/SCRIPT` serving on a free port.
fn python_server(script: &str) -> Command {
    let mut command = testkit::python_example(script);
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    command
}

/// Byte-compiles the package in `bindings/python`, which the Python servers
/// import from there, as `pip install` does for a user's: in an environment
/// with PYTHONDONTWRITEBYTECODE (this sandbox's) every start would compile
/// it again, 5 ms that no installed grestart costs.
fn compile_python_package() {
    let package = testkit::repo().join("bindings/python/grestart");
    let status = Command::new(testkit::python_venv())
        .args(["-m", "compileall", "-q"])
        .arg(&package)
        .status()
        .expect("run compileall");
    assert!(status.success(), "compileall {}", package.display());
}

/// A Python restart against what starting the same application costs
/// without grestart, and what the interpreter and the imports cost of it.
/// Each idle restart is followed by a plain start, so that the load other
/// processes put on the machine falls on both alike.
fn python_comparison() -> String {
    const RUNS: usize = 30;
    let mut table = format!(
        "A Python restart against what starting the same application costs without \
         grestart (medians of {RUNS} idle restarts, each followed by a plain start, spawn to \
         first answer; added: the median of the {RUNS} differences):\n\n\
         | server | restart, idle | plain start | added by grestart | interpreter start | framework import | grestart + adapter import |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let interpreter = summarize((0..RUNS).map(|_| python_run("pass").0).collect()).median;
    for (name, script, framework, adapter) in [
        (
            "aiohttp",
            "aiohttp_server.py",
            "from aiohttp import web",
            "grestart.aiohttp",
        ),
        (
            "uvicorn",
            "uvicorn_server.py",
            "import uvicorn",
            "grestart.uvicorn",
        ),
    ] {
        let mut server = Server::launch(python_server(script));
        let (restarts, plains): (Vec<_>, Vec<_>) = (0..RUNS)
            .map(|_| (quiet_restart(&mut server), plain_start(name)))
            .unzip();
        server.stop();
        // Each pair saw the same load: the median of their differences.
        let mut added: Vec<f64> = (restarts.iter().zip(&plains))
            .map(|(restart, plain)| ms(*restart) - ms(*plain))
            .collect();
        added.sort_by(f64::total_cmp);
        let (restart, plain) = (summarize(restarts).median, summarize(plains).median);
        let (imports, adapters): (Vec<_>, Vec<_>) = (0..RUNS)
            .map(|_| python_run(&timed_imports(framework, adapter)).1)
            .map(|times| (times[0], times[1]))
            .unzip();
        let _ = writeln!(
            table,
            "| {name} | {:.1} ms | {:.1} ms | {:+.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(restart),
            ms(plain),
            added[RUNS / 2],
            ms(interpreter),
            ms(summarize(imports).median),
            ms(summarize(adapters).median),
        );
    }
    table
}

/// How often [`quiet_restart`] asks who serves.
const PROBE_PAUSE: Duration = Duration::from_micros(500);

/// An idle restart's latency, signal to the successor's first answer, asked
/// every [`PROBE_PAUSE`] rather than back to back as `Server::restart` asks:
/// the old generation answering probes without a pause keeps a core busy
/// while its successor starts, on a machine of two, which a plain start
/// never competes with. Over-counts by up to the pause.
fn quiet_restart(server: &mut Server) -> Duration {
    let old = server.pid;
    let exit = testkit::pidfd(old).expect("pidfd of the serving generation");
    let signalled = Instant::now();
    testkit::kill(old, libc::SIGUSR2);
    let answer = loop {
        let answer = testkit::get(server.addr, true).expect("the service answers during a restart");
        if !server.pids.contains(&answer.pid) {
            break answer;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "pid {old} never handed over"
        );
        std::thread::sleep(PROBE_PAUSE);
    };
    let latency = signalled.elapsed();
    (server.pid, server.generation) = (answer.pid, answer.generation);
    server.pids.push(answer.pid);
    let leaving = Leaving {
        pid: old,
        exit,
        signalled,
        latency,
        version: answer.version,
    };
    server.wait_gone(&leaving, Duration::from_secs(40));
    latency
}

/// Spawn to first answer of `benches/python/plain_server.py FRAMEWORK`.
fn plain_start(framework: &str) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(testkit::python_venv())
        .arg(testkit::repo().join("benches/python/plain_server.py"))
        .arg(framework)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the plain server");
    let mut port = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("its port");
    let addr = SocketAddr::from(([127, 0, 0, 1], port.trim().parse().expect("a port")));
    while testkit::get(addr, true).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{framework} never answered"
        );
        std::thread::yield_now();
    }
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

/// Python code printing how long importing `framework`, then `adapter`, takes, in seconds.
fn timed_imports(framework: &str, adapter: &str) -> String {
    format!(
        "import time; a = time.perf_counter(); {framework}; b = time.perf_counter(); \
         import {adapter}; c = time.perf_counter(); print(b - a, c - b)"
    )
}

/// Runs `python -c CODE` (with the package on its path): its wall time, and
/// the durations it printed (seconds, separated by spaces).
fn python_run(code: &str) -> (Duration, Vec<Duration>) {
    let mut command = Command::new(testkit::python_venv());
    command
        .args(["-c", code])
        .env("PYTHONPATH", testkit::repo().join("bindings/python"))
        .env(
            "GRESTART_LIBRARY",
            testkit::lib_dir().join("libgrestart.so"),
        );
    let started = Instant::now();
    let out = command.output().expect("run python");
    let took = started.elapsed();
    assert!(out.status.success(), "python -c {code:?}");
    let printed = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| Duration::from_secs_f64(s.parse().expect("seconds")))
        .collect();
    (took, printed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
