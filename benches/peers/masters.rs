//! The peers that restart by a master process: nginx's binary upgrade,
//! HAProxy's master-worker reload and gunicorn's re-exec, each configured
//! as its own documentation says for a reload that loses nothing (the doc
//! and section are named at each). Their workers answer with `X-Pid`, which
//! tells the new generation from the old.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{TempDir, children, kill, pidfd, reap, wait_exit};

use crate::{Peer, first_answer_from, stop_tree, wait_for_file_line};

/// A running master, its listening address and its directory.
struct Master {
    dir: TempDir,
    pid: i32,
    addr: SocketAddr,
}

impl Master {
    /// Starts `command`, whose master is the process itself, or with
    /// `daemon` the process it forks and leaves (then ours, as its subreaper)
    /// once it wrote `pid_file`.
    fn spawn(dir: TempDir, port: u16, command: &mut Command, daemon: Option<&str>) -> Master {
        let log = fs::File::create(dir.join("output.log")).expect("log file");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let pid = match daemon {
            None => child.id() as i32,
            Some(pid_file) => {
                let status = child.wait().expect("wait for the daemon's start");
                assert!(
                    status.success(),
                    "{:?} failed: {status}",
                    command.get_program()
                );
                let text = fs::read_to_string(dir.join(pid_file)).expect("the daemon's pid file");
                text.trim().parse().expect("a pid")
            }
        };
        let master = Master { dir, pid, addr };
        // Reaped by pid (reap), like every later master: they are our
        // children only once their parent, the previous master, has exited.
        drop(child);
        first_answer_from(master.addr, &[], Instant::now(), Some(&master.log_path()));
        master
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("output.log")
    }

    /// The workers serving now.
    fn workers(&self) -> Vec<i32> {
        children(self.pid, false)
    }

    /// A binary upgrade as nginx and gunicorn do it: USR2 to the master, which
    /// starts a new master of its own; once the new workers answer, `stop` to
    /// the old master, which must exit `within`. Returns the restart latency.
    fn upgrade(&mut self, stop: libc::c_int, within: Duration, name: &str) -> Duration {
        let old_workers = self.workers();
        let old_exit = pidfd(self.pid).expect("pidfd of the old master");
        let signalled = Instant::now();
        kill(self.pid, libc::SIGUSR2);
        let (latency, _) =
            first_answer_from(self.addr, &old_workers, signalled, Some(&self.log_path()));
        let new_master = new_master(self.pid, &old_workers);
        kill(self.pid, stop);
        assert!(
            wait_exit(&old_exit, within),
            "the old {name} master did not exit on signal {stop}"
        );
        reap(self.pid);
        self.pid = new_master;
        latency
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        stop_tree(self.pid);
    }
}

/// A binary upgrade of nginx, as nginx.org "Controlling nginx", section
/// "Upgrading Executable on the Fly" says: USR2 to the master, which execs a
/// new master (a child of the old one) with the same listening sockets; once
/// the new workers serve, QUIT to the old master, which shuts its workers
/// down gracefully. nginx runs as a daemon, as by default: a master whose
/// parent is the process that started it ignores USR2 ("the changing binary
/// signal is ignored"), as a master of `daemon off;` always is.
pub struct Nginx(Master);

impl Nginx {
    pub fn start() -> Nginx {
        let dir = TempDir::new("peers-nginx");
        let port = testkit::free_port();
        let d = dir.join("");
        let d = d.display();
        // `$pid` is the worker's pid: the generation's.
        let config = format!(
            "master_process on;\nworker_processes 1;\npid {d}nginx.pid;\n\
             error_log {d}error.log notice;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}body;\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{ add_header X-Pid $pid; return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        );
        fs::write(dir.join("nginx.conf"), config).expect("nginx.conf");
        let mut command = Command::new("/usr/sbin/nginx"); // an absolute path: USR2 execs it again
        command
            .arg("-p")
            .arg(dir.join(""))
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"));
        Nginx(Master::spawn(dir, port, &mut command, Some("nginx.pid")))
    }
}

impl Peer for Nginx {
    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn restart(&mut self) -> Duration {
        self.0
            .upgrade(libc::SIGQUIT, Duration::from_secs(30), "nginx")
    }
}

/// HAProxy in master-worker mode (`-W`), reloaded by USR2 to the master,
/// which re-executes itself and starts a new worker; the old worker is told
/// to finish (soft stop). The listening sockets: the management guide of
/// 2.6 (`/usr/share/doc/haproxy/management.txt`, section 3, option `-x`)
/// says that in master-worker mode the master fetches them from the old
/// worker itself (`-x sockpair@`), so no stats socket with `expose-fd
/// listeners` is needed. `option idle-close-on-response` (configuration
/// manual, section 4) keeps the old worker from closing idle keep-alive
/// connections at the soft stop: it answers their next request with
/// `Connection: close` instead, for clients that do not retry (ours).
/// HAProxy answers by itself (`http-request return`): HAProxy is what
/// restarts, not a backend.
pub struct Haproxy(Master);

impl Haproxy {
    pub fn start() -> Haproxy {
        let dir = TempDir::new("peers-haproxy");
        let port = testkit::free_port();
        let config = format!(
            "global\n  master-worker\n\ndefaults\n  mode http\n  option idle-close-on-response\n\
             \x20 timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
             frontend web\n  bind 127.0.0.1:{port}\n\
             \x20 http-request return status 200 content-type text/plain string ok hdr X-Pid \"%pid\"\n"
        );
        fs::write(dir.join("haproxy.cfg"), config).expect("haproxy.cfg");
        let mut command = Command::new("/usr/sbin/haproxy");
        command.arg("-W").arg("-f").arg(dir.join("haproxy.cfg"));
        Haproxy(Master::spawn(dir, port, &mut command, None))
    }
}

impl Peer for Haproxy {
    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    fn restart(&mut self) -> Duration {
        let master = &self.0;
        let old_workers = master.workers();
        let exits: Vec<_> = (old_workers.iter())
            .map(|&pid| pidfd(pid).expect("pidfd of the old worker"))
            .collect();
        let signalled = Instant::now();
        kill(master.pid, libc::SIGUSR2);
        let (latency, _) = first_answer_from(
            master.addr,
            &old_workers,
            signalled,
            Some(&master.log_path()),
        );
        for exit in exits {
            assert!(
                wait_exit(&exit, Duration::from_secs(30)),
                "the old haproxy worker did not finish"
            );
        }
        // A USR2 that reaches the master before it has finished a reload is
        // lost: the next one waits until the master has reaped the old
        // workers ("Former worker ... exited"), its last step.
        for pid in old_workers {
            wait_for_file_line(
                &master.log_path(),
                &format!("Former worker ({pid}) exited"),
                1,
                Duration::from_secs(10),
            );
        }
        latency
    }
}

/// gunicorn re-executed as its documentation says (docs.gunicorn.org,
/// "Signal Handling", "Upgrading to a new binary on the fly"): USR2 to the
/// master starts a new master (a child of the old one) and its workers on the
/// same listening sockets; once they serve, TERM to the old master, a
/// graceful shutdown of its workers. (The WINCH the page also names stops the
/// old workers only of a daemonized gunicorn; TERM does it either way.) One
/// gthread worker: threads and keep-alive, like the threaded Python example.
pub struct Gunicorn {
    master: Master,
    /// How many times a new master has taken over from its parent.
    promotions: usize,
}

impl Gunicorn {
    pub fn start() -> Gunicorn {
        let dir = TempDir::new("peers-gunicorn");
        let port = testkit::free_port();
        let gunicorn = testkit::repo().join("target/python-venv/bin/gunicorn");
        let mut command = Command::new(&gunicorn);
        command
            .arg(format!("--bind=127.0.0.1:{port}"))
            .args(["--workers=1", "--worker-class=gthread", "--threads=8"])
            .arg("--chdir")
            .arg(testkit::repo().join("benches/peers"))
            .arg("--pid")
            .arg(dir.join("gunicorn.pid"))
            .arg("wsgi_app:app");
        Gunicorn {
            master: Master::spawn(dir, port, &mut command, None),
            promotions: 0,
        }
    }
}

impl Peer for Gunicorn {
    fn addr(&self) -> SocketAddr {
        self.master.addr
    }

    fn restart(&mut self) -> Duration {
        let latency = self
            .master
            .upgrade(libc::SIGTERM, Duration::from_secs(40), "gunicorn");
        let master = &self.master;
        // The new master ignores USR2 until it has seen that its parent is
        // gone ("Master has been promoted"), which it checks about once a second.
        self.promotions += 1;
        wait_for_file_line(
            &master.log_path(),
            "Master has been promoted",
            self.promotions,
            Duration::from_secs(10),
        );
        latency
    }
}

/// The child of the old master that is not one of its old workers.
fn new_master(old_master: i32, old_workers: &[i32]) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found =
            (children(old_master, false).into_iter()).find(|pid| !old_workers.contains(pid));
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new master under {old_master}"
        );
        std::thread::sleep(Duration::from_millis(5)); // it is serving already: a moment at most
    }
}
