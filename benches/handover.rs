//! `cargo bench --bench handover`: what idle keep-alive connections cost a
//! restart. The C example holds 10, 1000, 10000 and 50000 idle keep-alive
//! connections when it is restarted; the benchmark reports how long the old
//! generation takes to exit after the signal when the successor adopts them
//! (hand-over) and when it does not (a successor that never asks: the old
//! generation closes idle connections after the idle grace,
//! `GR_DEFAULT_IDLE_GRACE_MS`, as before hand-over), and
//! the hand-over's cost per connection. Raises its `ulimit -n` to what
//! 50000 connections need (the old generation holds each twice for a moment),
//! which takes root or a hard limit that high; `GR_BENCH_COUNTS=10,1000`
//! measures only those. Writes `target/bench/handover-table.txt`.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn};
use testkit::{Server, TempDir};

const RUNS: usize = 5;
const COUNTS: [usize; 4] = [10, 1000, 10000, 50000];
/// Connections to one server address from one client address: fewer than
/// the ephemeral ports (32768 to 60999 by default).
const PER_SOURCE: usize = 20000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs this too: building is the check.
        println!("hand-over benchmark: run it with `cargo bench --bench handover`");
        return;
    }
    testkit::become_subreaper();
    let dir = TempDir::new("bench-handover");
    let server = dir.join("http_server");
    let flaky = dir.join("flaky_server");
    testkit::compile(
        "cc",
        &[&testkit::repo().join("tests/c/flaky_server.c")],
        &flaky,
        &["-std=c99", "-pthread", "-O2"],
    );
    let mode = dir.join("mode");
    std::fs::write(&mode, "serve").unwrap();

    let mut table = String::from(
        "old generation's exit after the signal, idle keep-alive connections held (median of 5)\n\n\
         | idle connections | hand-over | of which: to ready, handing over and adopting, the old process's exit | without (successor takes none) | per connection | handing over and adopting, per connection |\n\
         |---|---|---|---|---|---|\n",
    );
    let mut base = None;
    let counts: Vec<usize> = std::env::var("GR_BENCH_COUNTS").map_or(COUNTS.to_vec(), |c| {
        c.split(',')
            .map(|n| n.parse().expect("GR_BENCH_COUNTS: numbers"))
            .collect()
    });
    for count in counts {
        // The old generation holds each connection twice for a moment (its own
        // and grestart's copy until the receipt); with the receipts flowing,
        // twice as many as it holds is more than enough, and a few thousand over it is.
        let (want, need) = ((2 * count + 1000) as u64, (count + 2000) as u64);
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let raised = setrlimit(Resource::RLIMIT_NOFILE, want.max(hard), want.max(hard));
        if let (Err(e), true) = (raised, hard < need) {
            let line = format!(
                "| {count} | not measured: needs `ulimit -n` {need}, the hard limit is {hard} ({e}) | | | | |"
            );
            println!("{line}");
            let _ = writeln!(table, "{line}");
            continue;
        }
        let mut runs: Vec<Phases> = (0..RUNS)
            .map(|_| exit_time(&server, &flaky, &mode, count, true))
            .collect();
        runs.sort_by_key(|p| p.total);
        let with = &runs[RUNS / 2];
        let without = exit_time(&server, &flaky, &mode, count, false).total;
        let per = base.map(|(n, t): (usize, Duration)| {
            with.total.saturating_sub(t).as_secs_f64() * 1e6 / (count - n) as f64
        });
        base.get_or_insert((count, with.total));
        let _ = writeln!(
            table,
            "| {count} | {:.1} ms | {:.1} + {:.1} + {:.1} ms | {:.0} ms | {} | {:.2} µs |",
            ms(with.total),
            ms(with.to_ready),
            ms(with.handing_over),
            ms(with.exit),
            ms(without),
            per.map_or("(the baseline)".to_string(), |us| format!("{us:.2} µs")),
            with.handing_over.as_secs_f64() * 1e6 / count as f64
        );
        println!("{count} connections: done");
    }
    println!("\n{table}");
    let out = testkit::repo().join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("handover-table.txt"), &table).unwrap();
}

/// Where an old generation's exit time goes, from the signal: until it
/// drains (the successor started and ready), until its hooks run (every
/// connection handed over and adopted), until it has exited.
struct Phases {
    total: Duration,
    to_ready: Duration,
    handing_over: Duration,
    exit: Duration,
}

/// One restart of the C example holding `count` idle keep-alive connections.
/// Without `adopting`, the successor is the flaky test server, which never
/// asks for connections.
fn exit_time(server: &Path, flaky: &Path, mode: &Path, count: usize, adopting: bool) -> Phases {
    testkit::build_c_example(server, 1);
    let mut command = Command::new(server);
    command
        .arg("127.0.0.1:0")
        .env("GRESTART_LOG", "info")
        .env("GR_TEST_MODE_FILE", mode);
    let mut running = Server::launch(command);
    let mut idle: Vec<TcpStream> = (0..count)
        .map(|i| keep_alive(running.addr, i / PER_SOURCE))
        .collect();
    if !adopting {
        std::fs::copy(flaky, server.with_extension("new")).unwrap();
        std::fs::rename(server.with_extension("new"), server).unwrap();
    }
    let leaving = running.hand_over(libc::SIGUSR2);
    // Timed when its pidfd turns readable, before the reaping and the checks.
    assert!(testkit::wait_exit(&leaving.exit, Duration::from_secs(30)));
    let total = leaving.signalled.elapsed();
    running.wait_gone(&leaving, Duration::from_secs(1));
    // The old generation's own lines, as read (stderr is unbuffered).
    let (drain, _) = running.wait_for_log_at("draining", Duration::from_secs(1));
    let (hooks, _) = running.wait_for_log_at("shutdown hooks", Duration::from_secs(1));
    let phases = Phases {
        total,
        to_ready: drain - leaving.signalled,
        handing_over: hooks - drain,
        exit: total.saturating_sub(hooks - leaving.signalled),
    };
    if adopting {
        // Every connection went over: a few of them answer from the successor.
        for stream in idle.iter_mut().step_by((count / 10).max(1)) {
            assert_eq!(get(stream), running.pid, "served by the successor");
        }
    }
    running.stop();
    phases
}

/// A connection from 127.0.0.`2 + source` that has been answered once and stays open.
fn keep_alive(addr: SocketAddr, source: usize) -> TcpStream {
    let socket = nix::sys::socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let from = SockaddrIn::new(127, 0, 0, 2 + source as u8, 0);
    nix::sys::socket::bind(socket.as_raw_fd(), &from).expect("bind to a loopback address");
    let to = SockaddrIn::from(match addr {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => panic!("the C example listens on 127.0.0.1"),
    });
    nix::sys::socket::connect(socket.as_raw_fd(), &to).expect("connect");
    let mut stream = TcpStream::from(socket);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    get(&mut stream);
    stream
}

/// One GET on `stream`; the X-Pid of the answer.
fn get(stream: &mut TcpStream) -> i32 {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).expect("read");
        assert!(n > 0, "closed by the server");
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer).to_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = header(&text, "content-length").parse().unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return header(&text, "x-pid").parse().unwrap_or(0);
            }
        }
    }
}

fn header<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map_or("", str::trim)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
