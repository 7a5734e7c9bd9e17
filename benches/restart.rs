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

use testkit::{Load, Server, Summary, summarize};

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
            if std::env::var_os("GRESTART_LOG").is_none() {
                grestart::set_log_level(Some(grestart::Level::Warn));
            }
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

/// Touches `mb` MB of new heap in the background and says so on stderr: the
/// memory a real server holds, made after start-up so that a restart's cost,
/// not the successor's start-up, is what grows with it.
fn touch_heap(mb: usize) {
    std::thread::spawn(move || {
        let mut heap = vec![0u8; mb << 20];
        for page in heap.chunks_mut(4096) {
            page[0] = 1;
        }
        eprintln!("bench server: heap of {mb} MB touched");
        std::mem::forget(heap);
    });
}

/// HTTP/1.1 keep-alive; once draining, the next answer says `Connection: close`.
/// `GET /heap/N` also makes the server touch N MB (see [`touch_heap`]).
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
        if let Some(mb) = (head.strip_prefix("GET /heap/"))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
        {
            touch_heap(mb);
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
) -> (Vec<Duration>, testkit::LoadStats) {
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
    testkit::become_subreaper();
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

    // 7. Where the rest of the idle restart goes, beyond the floor.
    let (spawned, ready, answered) = breakdown(&binary);
    line(String::new());
    line(format!(
        "idle restart at 0 MB, from the signal (median of 30, debug log read times): spawned {:.2} ms, \
         successor ready {:.2} ms, first answer from it {:.2} ms (floor {:.2} ms)",
        ms(spawned),
        ms(ready),
        ms(answered),
        ms(floor.median)
    ));

    // The timelines before the gigabytes: the kernel is still reclaiming for a
    // while after them, which showed as a stall in a picture drawn afterwards.
    let timeline_svg = timelines(&binary);

    // 8. Restart cost against the server's memory.
    let sizes = [0usize, 1024, 4096];
    line(String::new());
    line(format!(
        "{:<34} {:>10} {:>10} {:>10} {:>10}",
        "idle restart (30, sizes in turn)", "0 MB", "1 GB", "4 GB", "4GB/0MB"
    ));
    let mut by_size: Vec<(&str, Vec<Summary>)> = Vec::new();
    for (name, signal) in [("grestart", libc::SIGUSR2), ("shellflip", libc::SIGUSR1)] {
        let summaries = (interleaved_restarts(&binary, name, signal, &sizes, 30).into_iter())
            .map(summarize)
            .collect();
        by_size.push((name, summaries));
    }
    for (name, summaries) in &by_size {
        for (label, pick) in [("median", 0), ("p99", 1)] {
            let values: Vec<f64> = (summaries.iter())
                .map(|s| ms(if pick == 0 { s.median } else { s.p99 }))
                .collect();
            line(format!(
                "{:<34} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
                format!("{name}, {label} (ms)"),
                values[0],
                values[1],
                values[2],
                values[2] / values[0]
            ));
        }
    }
    line(format!(
        "{:<34} {:>10.2} {:>10.2} {:>10.2} {:>10}",
        "fork+exec floor, median (ms)",
        ms(floor.median),
        ms(floor.median),
        ms(floor.median),
        "(a fresh start)"
    ));
    line(String::new());
    let count = 20;
    line(format!(
        "{:<48} {:>8} {:>8} {:>8}",
        format!("slowest keep-alive request, {count} restarts (ms)"),
        "0 MB",
        "4 GB",
        "4GB/0MB"
    ));
    let mut paused = Vec::new();
    for (name, signal) in [("grestart", libc::SIGUSR2), ("shellflip", libc::SIGUSR1)] {
        let [small, large] =
            [0usize, 4096].map(|mb| slowest_during_restarts(&binary, name, signal, mb, count, 4));
        let slowest = |s: &Slowest| s.in_paused.map_or("-".into(), |d| format!("{:.1}", ms(d)));
        paused.push(format!(
            "{name} {} and {} of {count} (slowest in them {} and {} ms)",
            small.paused,
            large.paused,
            slowest(&small),
            slowest(&large)
        ));
        let windows = [
            "to the successor's first answer",
            "to the old generation's exit",
            "the first second from the signal",
        ];
        let (small, large) = (small.figures(), large.figures());
        for (i, window) in windows.into_iter().enumerate() {
            let cell = |f: Option<Duration>| f.map_or("-".into(), |d| format!("{:.2}", ms(d)));
            let ratio = (small[i].zip(large[i]))
                .map_or("-".into(), |(s, l)| format!("{:.2}", ms(l) / ms(s)));
            line(format!(
                "{:<48} {:>8} {:>8} {:>8}",
                format!("{name}, {window}"),
                cell(small[i]),
                cell(large[i]),
                ratio
            ));
        }
    }
    let exit = slowest_while_one_exits(&binary, 4096, count, 4);
    line(format!(
        "{:<48} {:>8} {:>8.2}",
        "no restart, 1 s from killing another 4 GB one",
        "-",
        ms(exit)
    ));
    line(format!(
        "restarts the host paused (>= {} ms of steal in /proc/stat; left out above), at 0 MB and 4 GB: {}",
        HOST_PAUSE.as_millis(),
        paused.join(", ")
    ));

    // The pictures.
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).expect("create target/bench");
    let memory_svg = memory_chart(&sizes, &by_size, floor.median);
    std::fs::write(out.join("restart-memory.svg"), memory_svg).expect("write the plot");
    std::fs::write(out.join("restart-timeline.svg"), timeline_svg).expect("write the plot");
    std::fs::write(out.join("restart-table.txt"), &table).expect("write the table");
    println!(
        "\nwrote target/bench/restart-memory.svg, target/bench/restart-timeline.svg and target/bench/restart-table.txt"
    );
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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

/// Streams 1 GB through the caches in a throwaway process. Growing a
/// server's heap does that too, so without this the 0 MB restarts would be
/// measured with warm caches and the others with cold ones (measured here:
/// 1.42 ms warm, 1.88 ms cold for the same 0 MB server).
fn cool_caches(binary: &Path) {
    let hog = start(binary, "plain", 0);
    grow(&hog, 1024);
    hog.stop();
}

/// `count` idle restarts of one server per size in `sizes` (MB held by every
/// generation), taken in turn so that whatever the machine does meanwhile
/// weighs on every size alike; each from cold caches. Latencies per size.
fn interleaved_restarts(
    binary: &Path,
    mode: &str,
    signal: i32,
    sizes: &[usize],
    count: usize,
) -> Vec<Vec<Duration>> {
    let mut servers: Vec<Server> = (sizes.iter())
        .map(|&mb| {
            let server = start(binary, mode, 0);
            grow(&server, mb);
            server
        })
        .collect();
    let mut latencies = vec![Vec::new(); sizes.len()];
    for _ in 0..count {
        for ((server, &mb), samples) in servers.iter_mut().zip(sizes).zip(&mut latencies) {
            cool_caches(binary);
            samples.push(server.restart(signal).latency);
            grow(server, mb);
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

/// `count` restarts of a server whose every generation holds `mb` MB, each
/// from cold caches, under `keep_alive` clients: the slowest requests. The
/// heap is grown between restarts, never during one.
fn slowest_during_restarts(
    binary: &Path,
    mode: &str,
    signal: i32,
    mb: usize,
    count: usize,
    keep_alive: usize,
) -> Slowest {
    let mut server = start(binary, mode, 0);
    grow(&server, mb);
    let load = Load::start(server.addr, keep_alive, 0);
    let mut windows = Vec::new();
    for _ in 0..count {
        cool_caches(binary);
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
/// `keep_alive` clients while `count` times another process of `mb` MB is
/// killed beside it. The slowest request in the [`STRETCH`] from the kill
/// (the kernel freeing its memory), over the kills the host did not pause.
fn slowest_while_one_exits(binary: &Path, mb: usize, count: usize, keep_alive: usize) -> Duration {
    let server = start(binary, "plain", 0);
    let load = Load::start(server.addr, keep_alive, 0);
    let mut windows = Vec::new();
    for _ in 0..count {
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

/// Medians of 30 idle restarts at 0 MB, from the signal to: the parent's log
/// line saying the successor was spawned, the one saying it was ready, and the
/// first answer from it.
fn breakdown(binary: &Path) -> (Duration, Duration, Duration) {
    let args = [OsStr::new("serve"), OsStr::new("grestart")];
    let mut server = Server::start(binary, &args, "127.0.0.1:0", &[("GRESTART_LOG", "debug")]);
    let (mut spawned, mut ready, mut answered) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..30 {
        let restart = server.restart(libc::SIGUSR2);
        let wait = Duration::from_secs(10);
        spawned.push(server.wait_for_log_at("spawned with", wait).0 - restart.signalled);
        ready.push(server.wait_for_log_at("ready after", wait).0 - restart.signalled);
        answered.push(restart.latency);
    }
    server.stop();
    (
        summarize(spawned).median,
        summarize(ready).median,
        summarize(answered).median,
    )
}

/// Requests per 10 ms under mixed load across 8 restarts, 250 ms apart: with
/// grestart, and with a naive stop-and-start of a server without it (what a
/// user sees without grestart: a gap, and failed requests).
fn timelines(binary: &Path) -> String {
    let mut graceful = start(binary, "grestart", 0);
    let (stats, marks) = timeline(graceful.addr, || {
        graceful.restart(libc::SIGUSR2);
    });
    graceful.stop();

    let mut naive = Some(start(binary, "plain", 0));
    let addr = naive.as_ref().map(|s| s.addr).expect("started");
    let (naive_stats, naive_marks) = timeline(addr, || {
        // Stop it (SIGTERM, as a service manager would), then start it again.
        if let Some(old) = naive.take() {
            testkit::kill(old.pid, libc::SIGTERM);
            old.stop();
        }
        let args = [OsStr::new("serve"), OsStr::new("plain")];
        naive = Some(Server::start(binary, &args, &addr.to_string(), &[]));
    });
    if let Some(server) = naive {
        server.stop();
    }

    let peak = (stats.per_10ms.iter().chain(&naive_stats.per_10ms))
        .max()
        .copied()
        .unwrap_or(1) as f64;
    let mut svg = Svg::new(900.0, 560.0);
    for (top, title, stats, marks) in [
        (
            0.0,
            format!(
                "grestart: 8 restarts (red) under 4 keep-alive + 4 connection-per-request clients; failed requests: {}",
                stats.failed
            ),
            &stats,
            &marks,
        ),
        (
            280.0,
            format!(
                "without grestart: 8 stop-and-starts (red) under the same load; failed requests: {}",
                naive_stats.failed
            ),
            &naive_stats,
            &naive_marks,
        ),
    ] {
        // The last bucket is cut short by the end of the run.
        let buckets = &stats.per_10ms[..stats.per_10ms.len().saturating_sub(1)];
        let points = (buckets.iter().enumerate())
            .map(|(i, &v)| (i as f64 / 100.0, v as f64))
            .collect();
        let marks: Vec<f64> = marks.iter().map(Duration::as_secs_f64).collect();
        svg.panel(
            top,
            280.0,
            &title,
            (
                "time since the load started (s)",
                buckets.len() as f64 / 100.0,
            ),
            ("requests answered per 10 ms", peak),
            &[("", "steelblue", points)],
            &marks,
        );
    }
    svg.finish()
}

/// Load on `addr` across 8 calls of `restart`, 250 ms apart: what the clients
/// saw, and when each restart began.
fn timeline(
    addr: std::net::SocketAddr,
    mut restart: impl FnMut(),
) -> (testkit::LoadStats, Vec<Duration>) {
    let load = Load::start(addr, 4, 4);
    let mut marks = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250)); // pacing for the picture
        marks.push(load.started.elapsed());
        restart();
    }
    std::thread::sleep(Duration::from_millis(250));
    (load.finish(), marks)
}

/// Restart latency against the memory the server holds.
fn memory_chart(sizes: &[usize], by_size: &[(&str, Vec<Summary>)], floor: Duration) -> String {
    let gb = |mb: usize| mb as f64 / 1024.0;
    let mut series: Vec<Series<'_>> = Vec::new();
    for ((name, summaries), color) in by_size.iter().zip(["steelblue", "darkorange"]) {
        let points = (sizes.iter().zip(summaries))
            .map(|(&mb, s)| (gb(mb), ms(s.median)))
            .collect();
        series.push((name, color, points));
    }
    let flat = sizes.iter().map(|&mb| (gb(mb), ms(floor))).collect();
    series.push(("fork+exec floor (a fresh start)", "gray", flat));
    // Headroom above the lines for the legend.
    let top = 1.4 * (series.iter().flat_map(|s| &s.2).map(|p| p.1)).fold(1.0, f64::max);
    let mut svg = Svg::new(700.0, 360.0);
    svg.panel(
        0.0,
        360.0,
        "idle restart latency (median of 30) against the memory the server holds",
        (
            "touched heap of the server (GB)",
            gb(sizes[sizes.len() - 1]),
        ),
        ("restart latency (ms)", top),
        &series,
        &[],
    );
    svg.finish()
}

/// A line to draw: (legend, colour, points).
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// A minimal SVG plotter: panels with labelled axes, ticks and series.
struct Svg {
    width: f64,
    body: String,
}

impl Svg {
    fn new(width: f64, height: f64) -> Svg {
        Svg {
            width,
            body: format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
                 <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
            ),
        }
    }

    /// One chart in the band `top..top + height`: `x` and `y` are (label,
    /// maximum); `series` are (legend, colour, points); `marks` are red
    /// vertical lines at those x values.
    #[allow(clippy::too_many_arguments)]
    fn panel(
        &mut self,
        top: f64,
        height: f64,
        title: &str,
        x: (&str, f64),
        y: (&str, f64),
        series: &[Series<'_>],
        marks: &[f64],
    ) {
        let (left, right, upper, lower) =
            (70.0, self.width - 20.0, top + 40.0, top + height - 50.0);
        let px = |v: f64| left + v / x.1.max(f64::MIN_POSITIVE) * (right - left);
        let py = |v: f64| lower - v / y.1.max(f64::MIN_POSITIVE) * (lower - upper);
        let b = &mut self.body;
        let _ = writeln!(
            b,
            "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
            top + 20.0
        );
        let _ = writeln!(
            b,
            "<path d=\"M{left},{upper} V{lower} H{right}\" fill=\"none\" stroke=\"black\"/>"
        );
        for tick in ticks(x.1) {
            let at = px(tick);
            let _ = writeln!(
                b,
                "<line x1=\"{at:.1}\" y1=\"{lower}\" x2=\"{at:.1}\" y2=\"{}\" stroke=\"black\"/><text x=\"{at:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                lower + 5.0,
                lower + 18.0,
                round(tick)
            );
        }
        for tick in ticks(y.1) {
            let at = py(tick);
            let _ = writeln!(
                b,
                "<line x1=\"{}\" y1=\"{at:.1}\" x2=\"{left}\" y2=\"{at:.1}\" stroke=\"black\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><line x1=\"{left}\" y1=\"{at:.1}\" x2=\"{right}\" y2=\"{at:.1}\" stroke=\"#eee\"/>",
                left - 5.0,
                left - 8.0,
                at + 4.0,
                round(tick)
            );
        }
        let _ = writeln!(
            b,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            (left + right) / 2.0,
            lower + 36.0,
            x.0
        );
        let _ = writeln!(
            b,
            "<text transform=\"translate(16,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            (upper + lower) / 2.0,
            y.0
        );
        for &mark in marks {
            let at = px(mark);
            let _ = writeln!(
                b,
                "<line x1=\"{at:.1}\" y1=\"{upper}\" x2=\"{at:.1}\" y2=\"{lower}\" stroke=\"red\"/>"
            );
        }
        for (i, (legend, color, points)) in series.iter().enumerate() {
            let path: Vec<String> = (points.iter())
                .map(|&(vx, vy)| format!("{:.1},{:.1}", px(vx), py(vy)))
                .collect();
            let _ = writeln!(
                b,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                path.join(" ")
            );
            for &(vx, vy) in points.iter().filter(|_| points.len() < 20) {
                let _ = writeln!(
                    b,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    px(vx),
                    py(vy)
                );
            }
            if !legend.is_empty() {
                let _ = writeln!(
                    b,
                    "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{legend}</text>",
                    left + 10.0,
                    upper + 14.0 + 16.0 * i as f64
                );
            }
        }
    }

    fn finish(mut self) -> String {
        self.body.push_str("</svg>\n");
        self.body
    }
}

/// About five round tick values from 0 to `max`.
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 {
        return vec![0.0];
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|&t| t <= max * 1.0001)
        .collect()
}

fn round(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}
