//! A server under test: started, probed, restarted by signal and followed
//! from generation to generation, and stopped with everything it started.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{Response, get};
use crate::load::Load;
use crate::log::{Log, follow_output};
use crate::process::{become_subreaper, children, kill, pidfd, reap, wait_exit, zombie_children};

/// A server under test: its first generation is our child.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The pid serving now.
    pub pid: i32,
    pub generation: u64,
    /// Every pid that ever served, for cleaning up.
    pub pids: Vec<i32>,
    log: Log,
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
    pub fn launch(command: Command) -> Server {
        let server = Server::spawn(command);
        let first = server
            .probe(Duration::from_secs(10))
            .expect("the server answers");
        assert_eq!(first.pid, server.pid);
        server
    }

    /// [`Server::launch`] for a server that does not speak HTTP/1.1 (gRPC):
    /// not probed, it serves once it printed its first line.
    pub fn spawn(mut command: Command) -> Server {
        let program = PathBuf::from(command.get_program());
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let (line, log) = follow_output(&mut child);
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
        Server {
            child,
            addr,
            pid,
            generation: 1,
            pids: vec![pid],
            log,
        }
    }

    /// Waits for a line of the servers' stderr that contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.log.wait_for(needle, timeout)
    }

    /// [`Server::wait_for_log`], with the moment the line was read.
    pub fn wait_for_log_at(&self, needle: &str, timeout: Duration) -> (Instant, String) {
        self.log.wait_for_at(needle, timeout)
    }

    /// [`Log::wait_for_any`] on the servers' stderr.
    pub fn wait_for_log_any(&self, needles: &[&str], timeout: Duration) -> String {
        self.log.wait_for_any(needles, timeout)
    }

    /// [`Log::wait_for_all`] on the servers' stderr.
    pub fn wait_for_logs(&self, needles: &[&str], timeout: Duration) -> Vec<String> {
        self.log.wait_for_all(needles, timeout)
    }

    /// [`Log::until`] on the servers' stderr.
    pub fn log_until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        self.log.until(needle, timeout)
    }

    /// The lines of the servers' stderr read so far and not yet looked at.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines()
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
        let leaving = self.hand_over(signal);
        let old_status = self.wait_gone(&leaving, Duration::from_secs(40));
        Restart {
            signalled: leaving.signalled,
            latency: leaving.latency,
            pid: self.pid,
            version: leaving.version,
            old_status,
        }
    }

    /// The first half of [`Server::restart`]: signals, and follows the
    /// successor once a fresh connection is answered by it. The old
    /// generation may still be draining.
    pub fn hand_over(&mut self, signal: i32) -> Leaving {
        let old = self.pid;
        let exit = pidfd(old).expect("pidfd of the serving generation");
        let signalled = Instant::now();
        kill(old, signal);
        let deadline = signalled + Duration::from_secs(20);
        let response = loop {
            let response = self
                .probe(Duration::from_secs(5))
                .expect("the service answers during a restart");
            // An older generation may answer too: the one before stops
            // accepting only once it has heard that its successor is ready,
            // a moment after the successor began to accept.
            if !self.pids.contains(&response.pid) {
                break response;
            }
            assert!(Instant::now() < deadline, "pid {old} never handed over");
        };
        let latency = signalled.elapsed();
        assert_eq!(
            response.generation,
            self.generation + 1,
            "the generation goes up by one per restart"
        );
        self.pid = response.pid;
        self.generation = response.generation;
        self.pids.push(response.pid);
        Leaving {
            pid: old,
            exit,
            signalled,
            latency,
            version: response.version,
        }
    }

    /// The second half of [`Server::restart`]: waits up to `timeout` for the
    /// old generation to exit, reaps it and checks the serving one has no
    /// zombie children. Returns how it ended (a `waitpid` status).
    pub fn wait_gone(&self, leaving: &Leaving, timeout: Duration) -> Option<i32> {
        assert!(
            wait_exit(&leaving.exit, timeout),
            "generation pid {} did not exit after draining",
            leaving.pid
        );
        let status = reap(leaving.pid);
        let zombies = zombie_children(self.pid);
        assert!(
            zombies.is_empty(),
            "zombie children of {}: {zombies:?}",
            self.pid
        );
        status
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

/// A generation that handed over and may still be draining.
pub struct Leaving {
    pub pid: i32,
    /// Its pidfd: readable once it exited.
    pub exit: OwnedFd,
    pub signalled: Instant,
    /// Signal to the successor's first answer.
    pub latency: Duration,
    /// The successor's `X-Version`.
    pub version: String,
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

/// Restarts the server `command` starts `restarts` times in a row while
/// clients hammer it (keep-alive and one connection per request); the
/// version on disk changes halfway when `swap_in_v2` is given. Nothing may
/// fail, every old generation must exit, no zombie may be left.
pub fn restarts_of(command: Command, restarts: usize, swap_in_v2: Option<impl FnOnce()>) {
    become_subreaper();
    let mut server = Server::launch(command);
    let load = Load::start(server.addr, 4, 4);
    let versioned = swap_in_v2.is_some();
    let mut swap_in_v2 = swap_in_v2;
    let mut latencies = Vec::new();
    for i in 0..restarts {
        if i == restarts / 2 {
            if let Some(swap) = swap_in_v2.take() {
                swap();
            }
        }
        let restart = server.restart(libc::SIGUSR2);
        if versioned {
            let expected = if i < restarts / 2 { "1" } else { "2" };
            assert_eq!(
                restart.version, expected,
                "restart {i} runs the binary on disk"
            );
        }
        latencies.push(restart.latency);
    }
    let stats = load.finish();
    latencies.sort();
    println!(
        "{:?}: {} requests answered, {} failed; restart latency median {:?}, max {:?}; generations served: {}",
        server.child.id(),
        stats.ok,
        stats.failed,
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        stats.by_pid.len()
    );
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert!(stats.ok > 0, "the load got answers");
    assert_eq!(server.generation, 1 + restarts as u64);
    server.stop();
}
