//! `cargo bench --bench restart`: restart latency and correctness under load,
//! grestart side by side with cloudflare's shellflip, against the fork+exec floor.
//!
//! One binary plays every part. Run with `serve MODE ADDR [EXTRA]` it is the
//! server: the same tokio HTTP/1.1 server (keep-alive, 200 + `X-Pid` +
//! `X-Generation`) in three modes that differ only in how the listening socket
//! is obtained and when the process drains:
//! - `plain`: binds it, never restarts (the floor and the throughput baseline);
//! - `grestart`: `grestart::listen_tcp`, restarts on SIGUSR2, plus EXTRA more
//!   listeners to measure the cost per handed-over fd;
//! - `shellflip`: binds it on a fresh start; on SIGUSR1 shellflip spawns the
//!   successor, and the listener's fd number travels through shellflip's
//!   hand-over pipe (`LifecycleHandler::send_to_new_process`, the state
//!   transfer its documentation describes), with close-on-exec cleared for it.
//!
//! Without arguments it is the benchmark: it drives those servers with the
//! load clients of the test suite (which count every failed request) and
//! prints one table. Numbers are medians over many runs on whatever machine
//! runs it; the ratios are what carries over. `GRESTART_BENCH_RESTARTS`
//! (default 1000) sets the restarts under load per implementation.

#[path = "../tests/support/mod.rs"]
mod support;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shellflip::lifecycle::{LifecycleHandler, PipeWriter, receive_from_old_process};
use shellflip::{RestartConfig, ShutdownCoordinator};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::signal::unix::SignalKind;

use support::{Load, Server};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") && args.len() == 4 {
        let extra = std::env::var("GRESTART_BENCH_EXTRA")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if let Err(e) = serve(&args[2], &args[3], extra) {
            eprintln!("bench server: {e}");
            std::process::exit(1);
        }
    } else if args.iter().any(|a| a == "--bench") {
        benchmark();
    } else {
        // `cargo test --all-targets` builds and runs this too: building is the check.
        println!("restart benchmark: run it with `cargo bench --bench restart`");
    }
}

// ---------------------------------------------------------------- the server

/// What the shellflip successor receives through the hand-over pipe.
struct ShellflipHandover {
    listener: RawFd,
    generation: u64,
}

#[async_trait]
impl LifecycleHandler for ShellflipHandover {
    async fn pre_new_process(&mut self) {
        set_cloexec(self.listener, false); // the child inherits it across exec
    }

    async fn send_to_new_process(&mut self, mut pipe: PipeWriter) -> io::Result<()> {
        pipe.write_u32(self.listener as u32).await?;
        pipe.write_u64(self.generation + 1).await
    }

    async fn new_process_failed(&mut self) {
        set_cloexec(self.listener, true);
    }
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on an fd this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
}

fn serve(mode: &str, address: &str, extra: usize) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut extra_listeners: Vec<OwnedFd> = Vec::new();
    let (listener, generation) = match mode {
        "plain" => (std::net::TcpListener::bind(address)?, 1),
        "grestart" => {
            grestart::set_log_level(Some(grestart::Level::Warn));
            for i in 0..extra {
                let name = format!("extra{i}");
                extra_listeners.push(grestart::listen("tcp://127.0.0.1:0", Some(&name))?);
            }
            (grestart::listen_tcp(address)?, grestart::generation()?)
        }
        "shellflip" => match runtime.block_on(receive_shellflip_listener())? {
            Some(inherited) => inherited,
            None => (std::net::TcpListener::bind(address)?, 1),
        },
        _ => return Err(io::Error::other(format!("unknown mode {mode}"))),
    };
    listener.set_nonblocking(true)?;
    println!(
        "bench server: pid {} generation {generation} mode {mode} listening on {}",
        std::process::id(),
        listener.local_addr()?
    );
    runtime.block_on(run(mode, listener, generation))
}

async fn receive_shellflip_listener() -> io::Result<Option<(std::net::TcpListener, u64)>> {
    let Some(mut pipe) = receive_from_old_process() else {
        return Ok(None);
    };
    let fd = pipe.read_u32().await? as RawFd;
    let generation = pipe.read_u64().await?;
    set_cloexec(fd, true);
    // SAFETY: the previous generation passed us this open listening socket.
    Ok(Some((
        unsafe { std::net::TcpListener::from_raw_fd(fd) },
        generation,
    )))
}

/// Serves until it is time to drain, then waits for the open connections.
async fn run(mode: &str, listener: std::net::TcpListener, generation: u64) -> io::Result<()> {
    let fd = listener.as_raw_fd();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let draining = Arc::new(AtomicBool::new(false));
    let coordinator = ShutdownCoordinator::new();
    let drain: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = match mode {
        "grestart" => {
            grestart::ready()?;
            Box::pin(async {
                let _ = tokio::task::spawn_blocking(|| grestart::wait_shutdown(None)).await;
            })
        }
        "shellflip" => {
            let restart = RestartConfig {
                lifecycle_handler: Box::new(ShellflipHandover {
                    listener: fd,
                    generation,
                }),
                restart_signal: SignalKind::user_defined1(),
                exit_on_error: false,
                ..RestartConfig::default()
            }
            .try_into_restart_task()?;
            Box::pin(async move {
                let _ = restart.await; // first poll: ready; resolves once a successor started
            })
        }
        _ => Box::pin(std::future::pending()),
    };
    tokio::pin!(drain);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let handle = coordinator.handle();
                    let draining = Arc::clone(&draining);
                    tokio::spawn(async move {
                        let _ = connection(stream, generation, &draining).await;
                        drop(handle);
                    });
                }
            }
            () = &mut drain => break,
        }
    }
    drop(listener); // our copy; the successor holds the socket
    draining.store(true, Ordering::SeqCst);
    coordinator.shutdown().await;
    if mode == "grestart" {
        grestart::shutdown()?;
    }
    Ok(())
}

/// HTTP/1.1 keep-alive; once draining, the next answer says `Connection: close`.
async fn connection(stream: TcpStream, generation: u64, draining: &AtomicBool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut idle_since = Instant::now();
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match tokio::time::timeout(Duration::from_millis(200), read.read_line(&mut line)).await
            {
                Err(_) if head.is_empty() && line.is_empty() => {
                    if draining.load(Ordering::SeqCst)
                        && idle_since.elapsed() > Duration::from_secs(5)
                    {
                        return Ok(());
                    }
                    continue;
                }
                Err(_) => continue,
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let close = draining.load(Ordering::SeqCst) || lower.contains("\r\nconnection: close");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Pid: {}\r\nX-Generation: {generation}\r\nConnection: {}\r\n\r\nok\n",
            std::process::id(),
            if close { "close" } else { "keep-alive" }
        );
        write.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
        idle_since = Instant::now();
    }
}

// ------------------------------------------------------------ the benchmark

struct Summary {
    min: Duration,
    median: Duration,
    p99: Duration,
    max: Duration,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        min: samples[0],
        median: at(0.5),
        p99: at(0.99),
        max: samples[samples.len() - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

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

/// Restart latencies of `count` restarts, and what a concurrent load saw.
fn restarts(
    binary: &Path,
    mode: &str,
    signal: i32,
    count: usize,
    load: Option<(usize, usize)>,
) -> (Vec<Duration>, support::LoadStats) {
    let mut server = start(binary, mode, 0);
    let load = load.map(|(keep_alive, close)| Load::start(server.addr, keep_alive, close));
    let latencies = (0..count).map(|_| server.restart(signal).latency).collect();
    let stats = load.map(Load::finish).unwrap_or_default();
    server.stop();
    (latencies, stats)
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

fn benchmark() {
    support::become_subreaper();
    let binary = std::env::current_exe().expect("current_exe");
    let count: usize = std::env::var("GRESTART_BENCH_RESTARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let half = count / 2;
    let mut table = String::new();
    let mut line = |text: String| {
        println!("{text}");
        let _ = writeln!(table, "{text}");
    };
    println!(
        "grestart restart benchmark: {} cores, {count} restarts under load per implementation\n",
        num_cpus()
    );

    // 1. The floor: fork + exec of the same server until it answers, no restart logic.
    let floor: Vec<Duration> = (0..50)
        .map(|_| {
            let started = Instant::now();
            let server = start(&binary, "plain", 0);
            let elapsed = started.elapsed();
            server.stop();
            elapsed
        })
        .collect();
    let floor = summarize(floor);

    // 2-4. Restart latency without and with load, and failures, for both.
    let mut results = Vec::new();
    for (name, signal) in [("grestart", libc::SIGUSR2), ("shellflip", libc::SIGUSR1)] {
        let (idle, _) = restarts(&binary, name, signal, 50, None);
        let (keep_alive_latency, keep_alive) = restarts(&binary, name, signal, half, Some((8, 0)));
        let (close_latency, close) = restarts(&binary, name, signal, count - half, Some((0, 8)));
        let mut loaded = keep_alive_latency;
        loaded.extend(close_latency);
        results.push((name, summarize(idle), summarize(loaded), keep_alive, close));
    }

    line(format!(
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
    line(row("fork+exec floor (50 starts)", &floor));
    for (name, idle, loaded, _, _) in &results {
        line(row(&format!("{name}, idle (50)"), idle));
        line(row(&format!("{name}, under load ({count})"), loaded));
    }
    line(String::new());
    line(format!(
        "{:<34} {:>12} {:>12}",
        "requests during restarts", "answered", "failed"
    ));
    for (name, _, _, keep_alive, close) in &results {
        line(format!(
            "{:<34} {:>12} {:>12}",
            format!("{name}, keep-alive"),
            keep_alive.ok,
            keep_alive.failed
        ));
        line(format!(
            "{:<34} {:>12} {:>12}",
            format!("{name}, connection per request"),
            close.ok,
            close.failed
        ));
    }

    // 5. Steady state: the library is not on the request path.
    let (mut plain, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        plain.push(throughput(&binary, "plain", 2));
        with.push(throughput(&binary, "grestart", 2));
    }
    plain.sort_by(f64::total_cmp);
    with.sort_by(f64::total_cmp);
    line(String::new());
    line(format!(
        "steady state (median of 5 x 2 s), 8 keep-alive clients: plain {:.0} req/s, grestart {:.0} req/s, ratio {:.3}",
        plain[2],
        with[2],
        with[2] / plain[2]
    ));

    // 6. Cost per handed-over fd.
    line(String::new());
    line(format!(
        "{:<34} {:>12}",
        "listeners handed over", "median (ms)"
    ));
    let mut by_count = Vec::new();
    for listeners in [1usize, 10, 100, 1000] {
        let mut server = start(&binary, "grestart", listeners - 1);
        let samples: Vec<Duration> = (0..20)
            .map(|_| server.restart(libc::SIGUSR2).latency)
            .collect();
        server.stop();
        let median = summarize(samples).median;
        by_count.push((listeners, median));
        line(format!("{listeners:<34} {:>12.2}", ms(median)));
    }
    let per_fd = (by_count[3].1.as_secs_f64() - by_count[0].1.as_secs_f64()) / 999.0;
    line(format!("cost per extra fd: {:.2} µs", per_fd * 1e6));

    let grestart = &results[0];
    let shellflip = &results[1];
    line(String::new());
    line(format!(
        "ratios: grestart idle / floor = {:.2}, grestart / shellflip (idle median) = {:.2}, (loaded median) = {:.2}",
        grestart.1.median.as_secs_f64() / floor.median.as_secs_f64(),
        grestart.1.median.as_secs_f64() / shellflip.1.median.as_secs_f64(),
        grestart.2.median.as_secs_f64() / shellflip.2.median.as_secs_f64(),
    ));

    // The picture: requests per 10 ms over a few restarts under load.
    let svg = timeline(&binary);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).expect("create target/bench");
    std::fs::write(out.join("restart-timeline.svg"), svg).expect("write the plot");
    std::fs::write(out.join("restart-table.txt"), &table).expect("write the table");
    println!("\nwrote target/bench/restart-timeline.svg and target/bench/restart-table.txt");
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Requests per 10 ms under mixed load, with a restart every 250 ms, as SVG.
fn timeline(binary: &Path) -> String {
    let mut server = start(binary, "grestart", 0);
    let load = Load::start(server.addr, 4, 4);
    let mut marks = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250)); // pacing for the picture
        marks.push(load.started.elapsed());
        server.restart(libc::SIGUSR2);
    }
    std::thread::sleep(Duration::from_millis(250));
    let stats = load.finish();
    server.stop();

    // The last bucket is cut short by the end of the run.
    let buckets = &stats.per_10ms[..stats.per_10ms.len().saturating_sub(1)];
    let (width, height) = (900.0, 260.0);
    let peak = *buckets.iter().max().unwrap_or(&1) as f64;
    let x = |i: f64| 40.0 + i / buckets.len().max(1) as f64 * (width - 60.0);
    let y = |v: f64| height - 30.0 - v / peak.max(1.0) * (height - 60.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"40\" y=\"18\">requests answered per 10 ms (4 keep-alive + 4 connection-per-request clients); red: restart signal; failed requests: {}</text>\n",
        stats.failed
    );
    for mark in &marks {
        let at = x(mark.as_millis() as f64 / 10.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{at:.1}\" y1=\"30\" x2=\"{at:.1}\" y2=\"{}\" stroke=\"red\"/>",
            height - 30.0
        );
    }
    let points: Vec<String> = buckets
        .iter()
        .enumerate()
        .map(|(i, &v)| format!("{:.1},{:.1}", x(i as f64), y(v as f64)))
        .collect();
    let _ = writeln!(
        svg,
        "<polyline fill=\"none\" stroke=\"steelblue\" points=\"{}\"/>",
        points.join(" ")
    );
    let _ = writeln!(
        svg,
        "<text x=\"40\" y=\"{}\">0 s</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1} s</text><text x=\"4\" y=\"{}\">{peak}</text>",
        height - 12.0,
        width - 20.0,
        height - 12.0,
        buckets.len() as f64 / 100.0,
        y(peak) + 4.0
    );
    svg.push_str("</svg>\n");
    svg
}
