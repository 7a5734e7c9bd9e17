//! A service as a container runs it: PID 1 of a PID namespace of its own
//! (`unshare --pid --fork --mount-proc`, what `docker run` does), either the
//! server itself or an init in front of it (tini, dumb-init, `grestart run`).
//!
//! Inside the namespace pids differ from ours, so the service is followed by
//! its `X-Generation` and signalled, as an operator does, through its PID 1.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{Response, get};
use crate::process::{children, kill, pidfd, wait_exit};

pub struct Container {
    unshare: Child,
    /// Our pid of the namespace's PID 1.
    pub init: i32,
    init_exit: OwnedFd,
    pub addr: SocketAddr,
    /// The serving pid as the service reports it (a pid of the namespace).
    pub pid: i32,
    /// Its `X-Generation`, 0 for a program that does not link grestart.
    pub generation: u64,
    /// Every line the service wrote to stderr.
    pub log: Arc<ContainerLog>,
}

/// The lines a service wrote to stderr, and a way to wait for one.
#[derive(Default)]
pub struct ContainerLog {
    lines: Mutex<Vec<String>>,
    added: Condvar,
}

impl ContainerLog {
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until `count` lines hold `needle` (at most `timeout`).
    pub fn wait_for(&self, needle: &str, count: usize, timeout: Duration) {
        let lines = self.lines.lock().unwrap();
        let (lines, waited) = self
            .added
            .wait_timeout_while(lines, timeout, |lines| {
                lines.iter().filter(|l| l.contains(needle)).count() < count
            })
            .unwrap();
        assert!(
            !waited.timed_out(),
            "no {count} log lines with {needle:?} within {timeout:?}:\n{}",
            lines.join("\n")
        );
    }
}

impl Container {
    /// Starts `command` (an init, the server and its arguments) as PID 1 of a
    /// new PID namespace, reads the address it listens on from the server's
    /// first line ("... listening on HOST:PORT") and waits for its first answer.
    pub fn start(command: &[&OsStr]) -> Container {
        Container::start_on(command, None)
    }

    /// [`Container::start`] for a server that listens on `addr` and prints no
    /// such line.
    pub fn start_on(command: &[&OsStr], addr: Option<SocketAddr>) -> Container {
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) runs");
        let mut stdout = BufReader::new(unshare.stdout.take().expect("piped"));
        let mut line = String::new();
        if addr.is_none() {
            stdout
                .read_line(&mut line)
                .expect("the server's first line");
        }
        // Every generation writes to this pipe: keep reading it.
        thread::spawn(move || io::copy(&mut stdout, &mut io::sink()));
        let log = Arc::new(ContainerLog::default());
        let lines = Arc::clone(&log);
        let stderr = BufReader::new(unshare.stderr.take().expect("piped"));
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("{line}");
                lines
                    .lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
                lines.added.notify_all();
            }
        });
        let addr: SocketAddr = addr
            .or_else(|| line.trim().rsplit(' ').next().and_then(|a| a.parse().ok()))
            .unwrap_or_else(|| panic!("no address in the first line {line:?}"));
        // Once it answers, unshare has forked the namespace's PID 1.
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(addr, true).is_err() && Instant::now() < deadline {
            thread::yield_now();
        }
        let init = *children(unshare.id() as i32, false)
            .first()
            .expect("unshare forked the namespace's PID 1");
        let init_exit = pidfd(init).expect("pidfd of PID 1");
        let mut container = Container {
            unshare,
            init,
            init_exit,
            addr,
            pid: 0,
            generation: 0,
            log,
        };
        let first = container.answer();
        (container.pid, container.generation) = (first.pid, first.generation);
        container
    }

    /// A fresh connection's answer, retried for a few seconds.
    pub fn answer(&self) -> Response {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match get(self.addr, true) {
                Ok(response) => return response,
                Err(e) if Instant::now() > deadline => panic!(
                    "the service does not answer: {e}; processes {:?}",
                    self.processes()
                ),
                Err(_) => thread::yield_now(),
            }
        }
    }

    /// The first answer from `pid`: right after a restart reports its new
    /// pid, the old generation may still take a connection or two before it
    /// stops accepting.
    pub fn answer_from(&self, pid: i32) -> Response {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = self.answer();
            if answer.pid == pid {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} does not answer; {} does",
                answer.pid
            );
            thread::yield_now();
        }
    }

    /// Sends the restart signal to PID 1 and waits until another process
    /// answers (the next generation, where the service says); returns how
    /// long that took.
    pub fn restart(&mut self) -> Duration {
        let signalled = Instant::now();
        kill(self.init, libc::SIGUSR2);
        loop {
            let answer = self.answer();
            if answer.pid != self.pid {
                if self.generation > 0 {
                    assert_eq!(
                        answer.generation,
                        self.generation + 1,
                        "one restart per signal"
                    );
                }
                (self.pid, self.generation) = (answer.pid, answer.generation);
                return signalled.elapsed();
            }
            assert!(
                signalled.elapsed() < Duration::from_secs(20),
                "generation {} never handed over",
                self.generation
            );
        }
    }

    /// The processes of the namespace (PID 1 and everything below it) and
    /// their states (`R`, `S`, `Z`...).
    pub fn processes(&self) -> Vec<(i32, String)> {
        let mut found = vec![self.init];
        let mut next = 0;
        while next < found.len() {
            found.extend(children(found[next], false));
            next += 1;
        }
        (found.into_iter())
            .map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = (stat.rsplit_once(')'))
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .unwrap_or("gone")
                    .to_string();
                (pid, state)
            })
            .collect()
    }

    /// Our pid of the namespace's process `pid` (its last `NSpid`).
    pub fn host_pid(&self, pid: i32) -> i32 {
        (self.processes().into_iter())
            .map(|(host, _)| host)
            .find(|host| {
                std::fs::read_to_string(format!("/proc/{host}/status")).is_ok_and(|status| {
                    (status.lines())
                        .find_map(|l| l.strip_prefix("NSpid:"))
                        .and_then(|ids| ids.split_whitespace().last())
                        == Some(pid.to_string().as_str())
                })
            })
            .unwrap_or_else(|| panic!("no process {pid} in the container"))
    }

    /// Waits until the namespace holds `count` processes, none of them a
    /// zombie, and (with `stub`) one of them the stub the first generation
    /// became: every old generation has exited and been reaped.
    pub fn settles_to(&self, count: usize, stub: bool) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let processes = self.processes();
            let zombies = processes.iter().filter(|(_, s)| s == "Z").count();
            let stubs = (processes.iter())
                .filter(|(pid, _)| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "grestart-stub")
                })
                .count();
            if processes.len() == count && zombies == 0 && stubs == usize::from(stub) {
                return;
            }
            assert!(
                processes[0].1 != "gone",
                "PID 1 exited: the container ended"
            );
            assert!(
                Instant::now() < deadline,
                "the namespace should settle to {count} processes: {processes:?}"
            );
            thread::sleep(Duration::from_millis(20)); // polling /proc: no event to wait for
        }
    }

    /// SIGTERM to PID 1, as `docker stop` does; the namespace must end by
    /// itself. Returns how `unshare` (which exits as its PID 1 did) ended.
    pub fn stop(mut self) -> ExitStatus {
        kill(self.init, libc::SIGTERM);
        assert!(
            wait_exit(&self.init_exit, Duration::from_secs(40)),
            "PID 1 did not exit after SIGTERM: {:?}",
            self.processes()
        );
        self.unshare.wait().expect("unshare exits")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            // SIGKILL to a namespace's PID 1 ends every process in it.
            kill(self.init, libc::SIGKILL);
            let _ = self.unshare.wait();
        }
    }
}
