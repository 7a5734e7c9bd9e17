//! WebSockets across restarts: a draining aiohttp generation tells each of
//! its WebSocket clients to reconnect (close code 1012, "service restart"),
//! spread over its window, and the clients reconnect to the successor. The
//! clients (`tests/python/websocket_clients.py`, the `websockets` package)
//! check every close and every echo; this test restarts the example and
//! checks what they and the server report.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use testkit::Server;

const CLIENTS: usize = 200;
const RESTARTS: usize = 10;
/// The example's `websocket_window`: its WebSockets close over this long,
/// the last ones after its idle grace (`DEFAULT_IDLE_GRACE`) is over.
const WINDOW: Duration = Duration::from_millis(2500);
/// How long after the window every client is on the newest generation. The
/// clients take 0–0.3 s after the window on an idle machine. What this guards
/// against takes far longer: a close that waits for a close frame aiohttp no
/// longer reads takes its 10 s timeout, an untold client forever.
const RECONNECTED: Duration = Duration::from_secs(1);

/// The client process: its stdout lines as they come; ended by pid and
/// reaped when dropped.
struct Clients {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Clients {
    fn start(server: &Server, count: usize) -> Clients {
        let mut child = Command::new(testkit::python_venv())
            .arg(testkit::repo().join("tests/python/websocket_clients.py"))
            .arg(server.addr.to_string())
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the WebSocket clients");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                println!("clients: {line}");
                let _ = sender.send(line);
            }
        });
        Clients {
            child,
            stdin,
            lines,
        }
    }

    /// Waits until every client is connected to `generation`; returns how
    /// many seconds passed between the first of them and the last.
    fn all_on(&self, generation: u64, timeout: Duration) -> f64 {
        let prefix = format!("generation {generation}: all {CLIENTS} clients connected, ");
        let line = self.lines.recv_timeout(timeout).unwrap_or_else(|_| {
            panic!("not every client on generation {generation} within {timeout:?}")
        });
        let span = line
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|seconds| seconds.parse().ok());
        span.unwrap_or_else(|| panic!("expected {prefix:?}..., got {line:?}"))
    }

    /// Ends the run (the clients close with 1000) and returns the rest of
    /// what they printed.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for the clients");
        assert!(status.success(), "the clients failed: {status}");
        self.lines.try_iter().collect()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            testkit::kill(self.child.id() as i32, libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// 200 clients stay connected across 10 restarts: every
/// close is a 1012 close frame the server sent first and an orderly end,
/// every client is on the newest generation soon after the window (see
/// `RECONNECTED`), the closes are spread over the window, every message a
/// generation read is echoed back once, only a message crossing the close
/// frame goes unanswered.
#[test]
fn websocket_clients_are_told_to_reconnect_and_lose_no_message() {
    testkit::become_subreaper();
    let mut command = testkit::python_example("aiohttp_server.py");
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    let mut server = Server::launch(command);
    let clients = Clients::start(&server, CLIENTS);
    clients.all_on(1, Duration::from_secs(30));
    let mut read_by = HashMap::new();
    let mut slowest = Duration::ZERO;
    for _ in 0..RESTARTS {
        let leaving = server.hand_over(libc::SIGUSR2);
        // The old generation drains from the moment the successor answers.
        let draining = Instant::now();
        let span = clients.all_on(server.generation, WINDOW + RECONNECTED);
        slowest = slowest.max(draining.elapsed());
        println!(
            "generation {}: every client reconnected {:?} after the hand-over, over {span} s",
            server.generation,
            draining.elapsed()
        );
        assert!(
            span >= WINDOW.as_secs_f64() / 2.0,
            "the closes are spread over the window, not at once: {span} s"
        );
        server.wait_gone(&leaving, Duration::from_secs(15));
        let goodbye = server.wait_for_log(
            &format!(
                "pid {} generation {} exiting after",
                leaving.pid,
                server.generation - 1
            ),
            Duration::from_secs(5),
        );
        let messages: u64 = goodbye
            .strip_suffix(" WebSocket messages")
            .and_then(|rest| rest.rsplit(' ').next())
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no message count in {goodbye:?}"));
        read_by.insert(leaving.pid, messages);
    }
    let report = clients.finish();
    let violations: Vec<&String> = (report.iter())
        .filter(|line| line.starts_with("violation"))
        .collect();
    assert!(violations.is_empty(), "{violations:#?}");
    let echoes: HashMap<i32, u64> = (report.iter())
        .filter_map(|line| line.strip_prefix("echoes "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(pid, count)| (pid.parse().unwrap(), count.parse().unwrap()))
        .collect();
    for (pid, read) in &read_by {
        assert!(*read > 0, "generation pid {pid} served WebSocket messages");
        assert_eq!(
            echoes.get(pid),
            Some(read),
            "every message pid {pid} read came back to its client, once"
        );
    }
    let closes = (report.iter())
        .find_map(|line| line.strip_prefix("closes "))
        .expect("the clients' count of closes");
    let (closed, unanswered) = closes
        .split_once(" unanswered ")
        .map(|(c, u)| (c.parse::<usize>().unwrap(), u.parse::<usize>().unwrap()))
        .expect("closes C unanswered U");
    assert_eq!(
        closed,
        CLIENTS * RESTARTS,
        "each client closed once per restart"
    );
    println!(
        "{closed} closes, {unanswered} messages sent again after one; \
         every client on the newest generation at most {slowest:?} after a hand-over"
    );
    server.stop();
}
