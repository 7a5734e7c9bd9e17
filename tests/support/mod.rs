//! What the process-level tests and the demo share: building the example
//! servers, starting them, an HTTP load client that counts every failure, and
//! restarting a server while watching it through probe connections.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>` of the profile this binary was built with.
pub fn profile_dir() -> PathBuf {
    // target/<profile>/deps/<test binary> or target/<profile>/examples/<example>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The directory holding the `libgrestart.so` built with this binary. Cargo
/// copies it up to `target/<profile>` only for `cargo build`, not for
/// `cargo test`, so use the one in `deps`, which every build refreshes.
pub fn lib_dir() -> PathBuf {
    profile_dir().join("deps")
}

/// A directory removed with everything in it when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("grestart-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles C (or C++ with `compiler = "c++"`) sources against the header and
/// the library, with warnings as errors. Panics with the compiler's output.
pub fn compile(compiler: &str, sources: &[&Path], output: &Path, extra: &[&str]) {
    let lib = lib_dir();
    let mut cmd = Command::new(compiler);
    cmd.args(["-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-I")
        .arg(repo().join("bindings/cpp"))
        .args(extra)
        .args(sources)
        .arg("-o")
        .arg(output)
        .arg("-L")
        .arg(&lib)
        // DT_RPATH, not RUNPATH: cargo test sets LD_LIBRARY_PATH, which would
        // otherwise win and may point at a stale copy in target/<profile>.
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", lib.display()))
        .arg("-lgrestart");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} failed for {sources:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the C example reporting `version`, and puts it at `path` by renaming
/// over whatever is there: a running server's binary is replaced the way a
/// package manager replaces it.
pub fn build_c_example(path: &Path, version: u32) {
    build_example("cc", "examples/c/http_server.c", "-std=c99", path, version);
}

/// The prefork C example (a master and its workers) reporting `version`.
pub fn build_prefork_example(path: &Path, version: u32) {
    build_example(
        "cc",
        "examples/c/prefork_server.c",
        "-std=c99",
        path,
        version,
    );
}

/// [`build_c_example`] for the C++ example.
pub fn build_cpp_example(path: &Path, version: u32) {
    build_example(
        "c++",
        "examples/cpp/http_server.cpp",
        "-std=c++17",
        path,
        version,
    );
}

/// The C example built with AddressSanitizer (and LeakSanitizer, which makes
/// a process that leaked exit with a non-zero status).
pub fn build_c_example_with_asan(path: &Path) {
    build_example(
        "cc",
        "examples/c/http_server.c",
        "-fsanitize=address",
        path,
        1,
    );
}

fn build_example(compiler: &str, source: &str, flag: &str, path: &Path, version: u32) {
    let fresh = path.with_extension("new");
    let define = format!("-DAPP_VERSION=\"{version}\"");
    compile(
        compiler,
        &[&repo().join(source)],
        &fresh,
        &[flag, "-pthread", &define],
    );
    std::fs::rename(&fresh, path).expect("rename the new binary into place");
}

/// Makes this process the reaper of its orphaned descendants, so that every
/// generation of a server (each a child of the previous one) ends up as our
/// child once its parent exits, and we can reap it and see it is gone.
pub fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// A pidfd for `pid`, to wait for its exit without polling.
pub fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that only we hold.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` exited; false if `timeout` passed first.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as i32) == 1 }
}

/// Reaps `pid` if it is our (possibly adopted) child, returning its wait status.
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on one specific pid.
    (unsafe { libc::waitpid(pid, &mut status, 0) } == pid).then_some(status)
}

/// The pids of the zombie children of `parent`.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    children(parent, true)
}

/// The pids of the children of `parent` (only the zombies, with `zombies`).
pub fn children(parent: i32, zombies_only: bool) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": the comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if (!zombies_only || fields.first() == Some(&"Z"))
            && fields.get(1).and_then(|p| p.parse().ok()) == Some(parent)
        {
            found.push(pid);
        }
    }
    found
}

/// Sends `signal` to `pid` (only ever a server this test started).
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill with a pid we started.
    unsafe { libc::kill(pid, signal) };
}

/// A server under test: its first generation is our child.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The pid serving now.
    pub pid: i32,
    pub generation: u64,
    /// Every pid that ever served, for cleaning up.
    pub pids: Vec<i32>,
    /// The lines every generation writes to stderr (also echoed to ours),
    /// with the moment each was read.
    log: Receiver<(Instant, String)>,
}

impl Server {
    /// Starts `program args... ADDRESS` and reads the address it listens on
    /// from its first line ("... listening on HOST:PORT").
    pub fn start(program: &Path, args: &[&OsStr], address: &str, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(program);
        command.args(args).arg(address).envs(env.iter().copied());
        Server::launch(command)
    }

    /// [`Server::start`] for a prepared command (working directory, `PATH`...)
    /// whose last argument is the address.
    pub fn launch(mut command: Command) -> Server {
        let program = PathBuf::from(command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        stdout.read_line(&mut line).expect("first line");
        // Every generation inherits this pipe and prints its own first line:
        // keep reading, or a successor would die of SIGPIPE.
        thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        let (sender, log) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let read = Instant::now();
                eprintln!("{line}");
                let _ = sender.send((read, line));
            }
        });
        let parsed: Option<SocketAddr> =
            line.trim().rsplit(' ').next().and_then(|a| a.parse().ok());
        let Some(mut addr) = parsed else {
            // Not a Server yet, whose drop would end it: end it here.
            let _ = child.kill();
            let _ = child.wait();
            panic!("no address in the server's first line {line:?}");
        };
        // A server listening on every address is reached through loopback.
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let pid = child.id() as i32;
        let server = Server {
            child,
            addr,
            pid,
            generation: 1,
            pids: vec![pid],
            log,
        };
        let first = server
            .probe(Duration::from_secs(10))
            .expect("the server answers");
        assert_eq!(first.pid, pid);
        server
    }

    /// Waits for a line of the servers' stderr that contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_at(needle, timeout).1
    }

    /// [`Server::wait_for_log`], with the moment the line was read.
    pub fn wait_for_log_at(&self, needle: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok((read, line)) if line.contains(needle) => return (read, line),
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?} within {timeout:?}"),
            }
        }
    }

    /// One GET on a fresh connection; retried until it works or `timeout` passes.
    pub fn probe(&self, timeout: Duration) -> Result<Response, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match get(self.addr, true) {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => thread::yield_now(),
            }
        }
    }

    /// Sends the restart signal and waits until a fresh connection is answered
    /// by a new pid; then waits for the old generation to exit and reaps it.
    /// Returns the restart latency (signal to first answer from the successor).
    pub fn restart(&mut self, signal: i32) -> Restart {
        let old = self.pid;
        let old_exit = pidfd(old).expect("pidfd of the serving generation");
        let started = Instant::now();
        kill(old, signal);
        let deadline = started + Duration::from_secs(20);
        let response = loop {
            let response = self
                .probe(Duration::from_secs(5))
                .expect("the service answers during a restart");
            if response.pid != old {
                break response;
            }
            assert!(Instant::now() < deadline, "pid {old} never handed over");
        };
        let latency = started.elapsed();
        assert_eq!(
            response.generation,
            self.generation + 1,
            "the generation goes up by one per restart"
        );
        self.pid = response.pid;
        self.generation = response.generation;
        self.pids.push(response.pid);
        assert!(
            wait_exit(&old_exit, Duration::from_secs(40)),
            "generation pid {old} did not exit after draining"
        );
        let old_status = reap(old);
        let zombies = zombie_children(self.pid);
        assert!(
            zombies.is_empty(),
            "zombie children of {}: {zombies:?}",
            self.pid
        );
        Restart {
            signalled: started,
            latency,
            pid: response.pid,
            version: response.version,
            old_status,
        }
    }

    /// For a hand-over triggered some other way than [`Server::restart`]:
    /// waits for the serving generation (watched by `old_exit`) to exit, reaps
    /// it, and follows the generation that answers now.
    pub fn follow_hand_over(&mut self, old_exit: &OwnedFd) -> Response {
        assert!(
            wait_exit(old_exit, Duration::from_secs(20)),
            "pid {} did not exit",
            self.pid
        );
        reap(self.pid);
        let answer = self
            .probe(Duration::from_secs(5))
            .expect("the successor answers");
        self.pid = answer.pid;
        self.generation = answer.generation;
        self.pids.push(answer.pid);
        answer
    }

    /// Stops every generation still alive and reaps them all.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        // A generation's own children (prefork workers) go last: once their
        // parent is reaped they are ours (we are the subreaper) to reap.
        let workers: Vec<i32> = (self.pids.iter())
            .flat_map(|&pid| children(pid, false))
            .collect();
        for pid in self.pids.clone().into_iter().chain(workers) {
            if let Ok(fd) = pidfd(pid) {
                kill(pid, libc::SIGKILL);
                wait_exit(&fd, Duration::from_secs(5));
                reap(pid);
            }
        }
        let _ = self.child.wait();
        self.pids.clear();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_all();
    }
}

pub struct Restart {
    /// When the restart signal was sent.
    pub signalled: Instant,
    pub latency: Duration,
    /// How the previous generation ended (a `waitpid` status), if we reaped it.
    pub old_status: Option<i32>,
    pub pid: i32,
    pub version: String,
}

/// What the example servers answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub pid: i32,
    /// `X-Worker-Pid`, from a prefork worker answering for its master (else 0).
    pub worker_pid: i32,
    pub generation: u64,
    pub version: String,
    pub closes: bool,
}

/// One GET over a new connection.
pub fn get(addr: SocketAddr, close: bool) -> Result<Response, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    request(&mut stream, &mut reader, close)
}

/// Sends one GET on `stream` and reads the whole response from `reader`.
pub fn request(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    close: bool,
) -> Result<Response, String> {
    let connection = if close { "close" } else { "keep-alive" };
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| format!("send: {e}"))?;
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Err("connection closed before a response".into()),
        Err(e) => return Err(format!("read: {e}")),
        Ok(_) => {}
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {status_line:?}"))?;
    let mut response = Response {
        status,
        pid: 0,
        worker_pid: 0,
        generation: 0,
        version: String::new(),
        closes: false,
    };
    let mut length = 0u64;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "x-pid" => response.pid = value.parse().unwrap_or(0),
            "x-worker-pid" => response.worker_pid = value.parse().unwrap_or(0),
            "x-generation" => response.generation = value.parse().unwrap_or(0),
            "x-version" => response.version = value.to_string(),
            "content-length" => length = value.parse().unwrap_or(0),
            "connection" => response.closes = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    io::copy(&mut reader.by_ref().take(length), &mut io::sink())
        .map_err(|e| format!("read body: {e}"))?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    Ok(response)
}

/// What the load saw.
#[derive(Default, Debug)]
pub struct LoadStats {
    pub ok: u64,
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
    /// Requests answered per pid.
    pub by_pid: HashMap<i32, u64>,
    /// Requests answered in each 10 ms since the load started.
    pub per_10ms: Vec<u64>,
    /// The slowest keep-alive request that started in each 10 ms.
    pub slowest_keep_alive_per_10ms: Vec<Duration>,
}

impl LoadStats {
    /// The slowest keep-alive request that started between `from` and `to`
    /// (offsets from the start of the load).
    pub fn slowest_keep_alive_between(&self, from: Duration, to: Duration) -> Duration {
        let bucket = |d: Duration| (d.as_millis() / 10) as usize;
        let end = (bucket(to) + 1).min(self.slowest_keep_alive_per_10ms.len());
        (self.slowest_keep_alive_per_10ms.get(bucket(from)..end))
            .and_then(|window| window.iter().max().copied())
            .unwrap_or_default()
    }
}

/// Concurrent HTTP clients hammering a server until stopped: some reuse their
/// connection (keep-alive), some open one per request. Every request that does
/// not come back as a 200 counts as failed: refused, reset, cut off.
pub struct Load {
    /// When the clients started; the origin of `LoadStats::per_10ms`.
    pub started: Instant,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, keep_alive_clients: usize, close_clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let started = Instant::now();
        let threads = (0..keep_alive_clients + close_clients)
            .map(|i| {
                let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
                let keep_alive = i < keep_alive_clients;
                thread::spawn(move || client(addr, keep_alive, started, &stop, &stats))
            })
            .collect();
        Load {
            started,
            stop,
            stats,
            threads,
        }
    }

    pub fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load client thread");
        }
        Arc::try_unwrap(self.stats)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

fn client(
    addr: SocketAddr,
    keep_alive: bool,
    started: Instant,
    stop: &AtomicBool,
    stats: &Mutex<LoadStats>,
) {
    let mut connection: Option<(TcpStream, BufReader<TcpStream>)> = None;
    // Bounded: a client never runs for more than ten minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let sent = Instant::now();
        let result = if keep_alive {
            if connection.is_none() {
                connection = connect(addr).ok().map(|s| {
                    let reader = BufReader::new(s.try_clone().expect("clone stream"));
                    (s, reader)
                });
            }
            match connection.as_mut() {
                None => Err("connect failed".to_string()),
                Some((stream, reader)) => {
                    let r = request(stream, reader, false);
                    // The server asked to close (it is draining), or it broke.
                    if !matches!(&r, Ok(resp) if !resp.closes) {
                        connection = None;
                    }
                    r
                }
            }
        } else {
            get(addr, true)
        };
        let took = sent.elapsed();
        let mut stats = stats.lock().unwrap();
        match result {
            Ok(response) => {
                stats.ok += 1;
                *stats.by_pid.entry(response.pid).or_default() += 1;
                if keep_alive {
                    let bucket = ((sent - started).as_millis() / 10) as usize;
                    let slowest = &mut stats.slowest_keep_alive_per_10ms;
                    if slowest.len() <= bucket {
                        slowest.resize(bucket + 1, Duration::ZERO);
                    }
                    slowest[bucket] = slowest[bucket].max(took);
                }
                let bucket = (started.elapsed().as_millis() / 10) as usize;
                if stats.per_10ms.len() <= bucket {
                    stats.per_10ms.resize(bucket + 1, 0);
                }
                stats.per_10ms[bucket] += 1;
            }
            Err(e) => {
                stats.failed += 1;
                if stats.failures.len() < 10 {
                    stats.failures.push(e);
                }
            }
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
