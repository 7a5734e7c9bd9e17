//! `cargo bench --bench frameworks`: the framework examples (axum, aiohttp,
//! uvicorn, Asio) beside the hand-written C example: restart latency idle and
//! under load, and failed requests, over `GRESTART_BENCH_RESTARTS` (default
//! 200) restarts each, half idle and half under keep-alive and
//! connection-per-request load. For the Python servers it also prints what
//! the interpreter and the framework's own import cost, and what is left of
//! the restart beyond them: grestart, its adapter, the example's own set-up
//! and the hand-over itself (target: at most 10 ms).
//!
//! Needs what `scripts/test` installs: libasio-dev and the virtualenv of
//! `scripts/python-venv`. Writes `target/bench/frameworks-table.txt`.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Load, Server, Summary, TempDir, summarize};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs this too: building is the check.
        println!("frameworks benchmark: run it with `cargo bench --bench frameworks`");
        return;
    }
    testkit::become_subreaper();
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
    let python = |script: &str| {
        let mut command = testkit::python_example(script);
        command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
        command
    };
    let servers = [
        ("C (hand-written)", binary(&c)),
        ("axum (tokio)", binary(&axum)),
        ("Asio (C++)", binary(&asio)),
        ("aiohttp", python("aiohttp_server.py")),
        ("uvicorn", python("uvicorn_server.py")),
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
    let mut idle_medians = Vec::new();
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
        idle_medians.push((name, idle.median));
        println!("{name}: done");
    }

    table.push_str(
        "\nA Python restart against what starting the same application costs without \
         grestart (medians of 30 runs; the plain start is spawn to first answer):\n\n\
         | server | restart, idle | plain start | added by grestart | interpreter start | framework import | grestart + adapter import |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let interpreter = summarize((0..30).map(|_| python_run("pass").0).collect()).median;
    for (name, framework, adapter) in [
        ("aiohttp", "from aiohttp import web", "grestart.aiohttp"),
        ("uvicorn", "import uvicorn", "grestart.uvicorn"),
    ] {
        let restart = idle_medians
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
            .expect("measured");
        let plain = summarize((0..30).map(|_| plain_start(name)).collect()).median;
        let (imports, adapters): (Vec<_>, Vec<_>) = (0..30)
            .map(|_| python_run(&timed_imports(framework, adapter)).1)
            .map(|times| (times[0], times[1]))
            .unzip();
        let _ = writeln!(
            table,
            "| {name} | {:.1} ms | {:.1} ms | {:+.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            ms(restart),
            ms(plain),
            ms(restart) - ms(plain),
            ms(interpreter),
            ms(summarize(imports).median),
            ms(summarize(adapters).median),
        );
    }
    println!("\n{table}");
    let out = testkit::repo().join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
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
