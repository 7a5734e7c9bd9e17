//! gRPC over HTTP/2 across restarts: the tonic example (`examples/grpc`)
//! restarted 20 times under a real gRPC client, grpcio
//! (`tests/python/grpc_client.py`), while 8 clients make unary calls and 4
//! read streams of 50 ticks 20 ms apart, each client on a connection of its
//! own. Every restart comes while the 4 streams are in flight on the serving
//! generation, which drains with GOAWAY: no call may fail (any status but OK
//! counts), every stream gets all its ticks, in order, from one pid, and
//! every old generation exits once its streams ended.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use testkit::{Server, TempDir};

const RESTARTS: usize = 20;
const UNARY_CLIENTS: usize = 8;
const STREAMS: usize = 4;
/// Ticks in a stream (the client asks for 50, 20 ms apart).
const TICKS: usize = 50;
/// An old generation exits at most this long after its last stream ended:
/// GOAWAY told every client to take its next call elsewhere, so its
/// connections close with their last stream (it takes milliseconds). A bound
/// on lingering, not on speed.
const EXIT_AFTER_STREAMS: Duration = Duration::from_secs(1);

/// `CLOCK_MONOTONIC` in seconds, the clock of the client's `time.monotonic()`.
fn monotonic() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// The gRPC client, ended (by pid) and reaped when dropped.
struct Client {
    child: Child,
    /// Closing it tells the client to finish.
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Client {
    fn start(server: &Server, stubs: &TempDir) -> Client {
        let venv = testkit::python_venv();
        assert!(
            venv.exists(),
            "{} is missing: scripts/python-venv makes it (scripts/test runs it first), with grpcio",
            venv.display()
        );
        let mut child = Command::new(venv)
            .arg(testkit::repo().join("tests/python/grpc_client.py"))
            .arg(server.addr.to_string())
            .arg(&stubs.0)
            .args([UNARY_CLIENTS.to_string(), STREAMS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC client");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Client {
            stdin: child.stdin.take(),
            child,
            lines,
        }
    }

    /// Waits until every stream client is reading a stream from `pid`.
    fn wait_for_streams_from(&self, pid: i32) {
        let began = format!(" {pid}");
        let mut clients = std::collections::HashSet::new();
        while clients.len() < STREAMS {
            let line = (self.lines.recv_timeout(Duration::from_secs(20)))
                .unwrap_or_else(|_| panic!("no stream from pid {pid} on {clients:?} within 20 s"));
            if let Some(client) =
                (line.strip_prefix("stream-began ")).and_then(|rest| rest.strip_suffix(&began))
            {
                clients.insert(client.to_string());
            }
        }
    }

    /// Tells the client to finish, and returns its report (every line after
    /// the streams it began, up to `done`).
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let mut report = Vec::new();
        loop {
            let line = (self.lines.recv_timeout(Duration::from_secs(40)))
                .unwrap_or_else(|_| panic!("the client did not finish; it said {report:?}"));
            if line == "done" {
                break;
            }
            if !line.starts_with("stream-began ") {
                report.push(line);
            }
        }
        let status = self.child.wait().expect("wait for the client");
        assert!(status.success(), "the client failed: {status}");
        report
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A generation that handed over: when, and when it exited (`None`: not
/// within 40 s).
struct Leaving {
    pid: i32,
    handed_over: f64,
    exited: Option<f64>,
}

/// `grestart restart`, which returns once the successor is ready; follows the
/// successor, and waits for the old generation to exit. (Waiting keeps the
/// restarts within grestart's cap of 8 generations draining at once, which
/// counts as draining every predecessor still alive at a restart.)
fn restart(server: &mut Server) -> Leaving {
    let pid = server.pid;
    let exit = testkit::pidfd(pid).expect("pidfd of the serving generation");
    let out = Command::new(env!("CARGO_BIN_EXE_grestart"))
        .args(["restart", "--pid", &pid.to_string(), "--timeout", "20"])
        .output()
        .expect("run grestart restart");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restart of {pid}: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let handed_over = monotonic();
    server.pid = said.trim().parse().expect("the successor's pid");
    server.pids.push(server.pid);
    server.generation += 1;
    let exited = testkit::wait_exit(&exit, Duration::from_secs(40)).then(monotonic);
    testkit::reap(pid);
    Leaving {
        pid,
        handed_over,
        exited,
    }
}

/// A stream the client read: from which pids, how many ticks, whether they
/// came in order, and when it ended.
struct Stream {
    pids: String,
    ticks: usize,
    in_order: bool,
    end: f64,
}

fn parse_stream(line: &str) -> Option<Stream> {
    let mut fields = line.strip_prefix("stream ")?.split(' ');
    Some(Stream {
        pids: fields.next()?.to_string(),
        ticks: fields.next()?.parse().ok()?,
        in_order: fields.next()? == "yes",
        end: fields.next()?.parse().ok()?,
    })
}

#[test]
fn grpc_example_restarts_with_no_failed_call_and_every_stream_finished() {
    testkit::become_subreaper();
    let dir = TempDir::new("grpc");
    let binary = dir.join("grpc_server");
    testkit::build_grpc_example(&binary, 1);
    testkit::run(
        Command::new(testkit::python_venv())
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(testkit::repo().join("examples/grpc"))
            .arg(format!("--python_out={}", dir.0.display()))
            .arg(format!("--grpc_python_out={}", dir.0.display()))
            .arg(testkit::repo().join("examples/grpc/echo.proto")),
    );
    let mut command = Command::new(&binary);
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    let mut server = Server::spawn(command);
    let client = Client::start(&server, &dir);

    let mut leaving = Vec::new();
    for _ in 0..RESTARTS {
        client.wait_for_streams_from(server.pid);
        leaving.push(restart(&mut server));
    }
    client.wait_for_streams_from(server.pid);
    let report = client.finish();

    let failed: Vec<&String> = report.iter().filter(|l| l.starts_with("failed ")).collect();
    assert!(failed.is_empty(), "calls not OK: {failed:#?}");
    let streams: Vec<Stream> = report.iter().filter_map(|l| parse_stream(l)).collect();
    for stream in &streams {
        assert!(
            stream.ticks == TICKS && stream.in_order && !stream.pids.contains(','),
            "a stream got {} ticks (in order: {}) from pids {}",
            stream.ticks,
            stream.in_order,
            stream.pids
        );
    }
    let answered: Vec<(&str, u64)> = (report.iter())
        .filter_map(|l| {
            let (pid, calls) = l.strip_prefix("unary ")?.split_once(' ')?;
            Some((pid, calls.parse().ok()?))
        })
        .collect();
    for pid in &server.pids {
        assert!(
            answered.iter().any(|&(p, _)| p == pid.to_string()),
            "generation pid {pid} answered no unary call"
        );
    }
    for generation in leaving {
        let pid = generation.pid.to_string();
        let ends: Vec<f64> = (streams.iter().filter(|s| s.pids == pid))
            .map(|s| s.end)
            .collect();
        assert!(
            ends.iter().any(|&end| end > generation.handed_over),
            "pid {pid} had no stream in flight when it handed over"
        );
        let last_end = ends.into_iter().fold(f64::MIN, f64::max);
        let exited = (generation.exited)
            .unwrap_or_else(|| panic!("generation pid {pid} did not exit after draining"));
        assert!(
            exited - last_end < EXIT_AFTER_STREAMS.as_secs_f64(),
            "pid {pid} exited {:.3} s after its last stream ended",
            exited - last_end
        );
    }
    println!(
        "{RESTARTS} restarts: {} streams of {TICKS} ticks and {} unary calls answered",
        streams.len(),
        answered.iter().map(|&(_, calls)| calls).sum::<u64>()
    );
    server.stop();
}
