//! `cargo bench --bench frameworks`: the framework examples (axum, aiohttp,
//! uvicorn, Asio) beside the hand-written C example: restart latency idle and
//! under load, and failed requests, over `GRESTART_BENCH_RESTARTS` (default
//! 200) restarts each, half idle and half under keep-alive and
//! connection-per-request load. For the Python servers it also prints what
//! the interpreter and the framework's own import cost, and what grestart
//! adds to a restart beyond what a plain start of the same application costs:
//! its import and its adapter's, the example's own set-up and the hand-over
//! itself (target: at most 3 ms). `GRESTART_BENCH_ONLY=python` runs only
//! that comparison (under a minute).
//!
//! Needs what `scripts/test` installs: libasio-dev and the virtualenv of
//! `scripts/python-venv`. Writes `target/bench/frameworks-table.txt` (only
//! the comparison: `target/bench/frameworks-python-table.txt`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Leaving, Load, Server, Summary, TempDir, summarize};

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
        .unwrap_or(200);
    let dir = TempDir::new("bench-frameworks");
    let c = dir.join("http_server");
    testkit::build_c_example(&c, 1);
    let axum = dir.join("axum_server");
    testkit::build_rust_example("axum_server", &["axum"], &axum, 1);
    let asio = dir.join("asio_server");
    testkit::build_asio_example(&asio, 1);
    let binary = |path: &std::path::Path| {
        let mut command = Command::new(path);
        command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
        command
    };
    let servers = [
        ("C (hand-written)", binary(&c)),
        ("axum (tokio)", binary(&axum)),
        ("Asio (C++)", binary(&asio)),
        ("aiohttp", python_server("aiohttp_server.py")),
        ("uvicorn", python_server("uvicorn_server.py")),
    ];

    let mut table = format!(
        "Restarts per server: {restarts} ({} idle, {} under load: 4 keep-alive + 4 connection-per-request clients)\n\n",
        restarts / 2,
        restarts - restarts / 2
    );
    table.push_str(
        "| server | idle median | idle p99 | under load median | under load p99 | requests | failed |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (name, command) in servers {
        let (idle, loaded, ok, failed) = measure(command, restarts);
        let _ = writeln!(
            table,
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {ok} | {failed} |",
            ms(idle.median),
            ms(idle.p99),
            ms(loaded.median),
            ms(loaded.p99)
        );
        println!("{name}: done");
    }

    table.push('\n');
    table.push_str(&python_comparison());
    println!("\n{table}");
    std::fs::write(out.join("frameworks-table.txt"), &table).expect("write the table");
}

/// Restart latencies idle, then under load, and what the load saw.
fn measure(command: Command, restarts: usize) -> (Summary, Summary, u64, u64) {
    let mut server = Server::launch(command);
    let idle = (0..restarts / 2)
        .map(|_| server.restart(libc::SIGUSR2).latency)
        .collect();
    let load = Load::start(server.addr, 4, 4);
    let loaded = (restarts / 2..restarts)
        .map(|_| server.restart(libc::SIGUSR2).latency)
        .collect();
    let stats = load.finish();
    server.stop();
    (summarize(idle), summarize(loaded), stats.ok, stats.failed)
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
