//! Failure semantics: the parent survives every way a restart can go wrong, keeps
//! serving under load, leaves no zombie, and a later restart still works.
//! Driven with tests/c/flaky_server.c, whose successors misbehave on request.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{Load, Server, TempDir};

const LOG_WAIT: Duration = Duration::from_secs(20);

struct Flaky {
    dir: TempDir,
    binary: PathBuf,
    mode_file: PathBuf,
}

impl Flaky {
    fn new(tag: &str) -> Flaky {
        let dir = TempDir::new(tag);
        let binary = dir.join("flaky_server");
        let source = testkit::repo().join("tests/c/flaky_server.c");
        testkit::compile("cc", &[&source], &binary, &["-std=c99", "-pthread"]);
        let mode_file = dir.join("mode");
        std::fs::write(&mode_file, "serve").unwrap();
        Flaky {
            dir,
            binary,
            mode_file,
        }
    }

    fn start(&self, env: &[(&str, &str)]) -> Server {
        Server::launch(self.command(env))
    }

    /// The server, started with every signal at its default disposition
    /// whatever this test inherited (a shell's background job ignores
    /// `SIGINT` and `SIGQUIT`, and grestart keeps what the first generation
    /// was started ignoring): the tests set what they start it with.
    fn command(&self, env: &[(&str, &str)]) -> Command {
        use std::os::unix::process::CommandExt;
        testkit::become_subreaper();
        let mut command = Command::new(&self.binary);
        // SAFETY: between fork and exec only signal(2), async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                for signo in 1..32 {
                    if signo != libc::SIGKILL && signo != libc::SIGSTOP {
                        libc::signal(signo, libc::SIG_DFL);
                    }
                }
                Ok(())
            });
        }
        command
            .envs(env.iter().copied())
            .env("GR_TEST_MODE_FILE", &self.mode_file)
            .env("GRESTART_LOG", "info")
            .arg("127.0.0.1:0");
        command
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(&self.mode_file, mode).unwrap();
    }
}

/// Signals a restart that must fail, and returns the parent's log line for it.
fn failed_restart(server: &Server) -> String {
    testkit::kill(server.pid, libc::SIGUSR2);
    let line = server.wait_for_log("restart failed, still serving", LOG_WAIT);
    let answer = server
        .probe(Duration::from_secs(5))
        .expect("the parent still serves");
    assert_eq!(answer.pid, server.pid, "nobody took over");
    let zombies = testkit::zombie_children(server.pid);
    assert!(
        zombies.is_empty(),
        "the failed successor was reaped: {zombies:?}"
    );
    line
}

#[test]
fn failed_successors_leave_the_parent_serving() {
    let flaky = Flaky::new("fail");
    let mut server = flaky.start(&[("GR_TEST_READY_TIMEOUT_MS", "500")]);
    let load = Load::start(server.addr, 0, 3);

    flaky.set_mode("exit");
    assert!(failed_restart(&server).contains("exited with status 3"));
    flaky.set_mode("crash");
    assert!(failed_restart(&server).contains("killed by signal 11"));
    flaky.set_mode("deaf");
    let line = failed_restart(&server);
    assert!(line.contains("was not ready within"), "{line}");
    flaky.set_mode("hang");
    let line = failed_restart(&server);
    assert!(
        line.contains("was not ready within") && line.contains("killed it"),
        "{line}"
    );

    flaky.set_mode("serve");
    let hidden = flaky.dir.join("hidden");
    std::fs::rename(&flaky.binary, &hidden).unwrap();
    assert!(failed_restart(&server).contains("No such file or directory"));
    std::fs::rename(&hidden, &flaky.binary).unwrap();
    set_mode_bits(&flaky.binary, 0o644);
    assert!(failed_restart(&server).contains("Permission denied"));
    set_mode_bits(&flaky.binary, 0o755);
    // Executable but not a program: the child's execve fails, and says so.
    let program = flaky.dir.join("program");
    std::fs::rename(&flaky.binary, &program).unwrap();
    std::fs::write(&flaky.binary, "not a program\n").unwrap();
    set_mode_bits(&flaky.binary, 0o755);
    let line = failed_restart(&server);
    assert!(
        line.contains("could not execute") && line.contains("Exec format error"),
        "{line}"
    );
    std::fs::rename(&program, &flaky.binary).unwrap();

    // State fully reset: the next restart works.
    server.restart(libc::SIGUSR2);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    server.stop();
}

/// The start-up directory removed: the child cannot enter it, and says so.
#[test]
fn a_working_directory_gone_fails_the_restart_clearly() {
    let flaky = Flaky::new("cwd");
    let start_dir = flaky.dir.join("wd");
    std::fs::create_dir(&start_dir).unwrap();
    testkit::become_subreaper();
    let mut command = std::process::Command::new(&flaky.binary);
    command
        .arg("127.0.0.1:0")
        .current_dir(&start_dir)
        .env("PWD", &start_dir)
        .env("GRESTART_LOG", "info");
    let mut server = Server::launch(command);
    std::fs::remove_dir(&start_dir).unwrap();
    let line = failed_restart(&server);
    assert!(
        line.contains("could not enter the working directory")
            && line.contains("No such file or directory"),
        "{line}"
    );
    std::fs::create_dir(&start_dir).unwrap();
    server.restart(libc::SIGUSR2);
    server.stop();
}

/// A successor of a server holding a large heap is spawned in that server's
/// memory (CLONE_VM): it must serve, and the server's memory must read back
/// exactly what it wrote.
#[test]
fn a_server_with_a_large_heap_restarts_unharmed() {
    let flaky = Flaky::new("heap");
    let mut server = flaky.start(&[("GR_TEST_HEAP_MB", "512")]);
    let load = Load::start(server.addr, 0, 2);
    for _ in 0..3 {
        server.restart(libc::SIGUSR2);
        let line = server.wait_for_log("heap of 512 MB", LOG_WAIT);
        assert!(line.ends_with("intact"), "{line}");
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    server.stop();
}

fn set_mode_bits(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_storm_of_signals_is_one_restart() {
    let flaky = Flaky::new("storm");
    let mut server = flaky.start(&[]);
    let load = Load::start(server.addr, 0, 2);
    for _ in 0..50 {
        testkit::kill(server.pid, libc::SIGUSR2);
    }
    let old_exit = testkit::pidfd(server.pid).unwrap();
    server.wait_for_log("ready after", LOG_WAIT);
    let answer = server.follow_hand_over(&old_exit);
    assert_eq!(answer.generation, 2, "exactly one hand-over");
    assert!(testkit::zombie_children(answer.pid).is_empty());
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    server.stop();
}

#[test]
fn a_restart_while_the_parent_drains_goes_ahead_and_the_deadline_ends_the_drain() {
    let flaky = Flaky::new("drain");
    let mut server = flaky.start(&[("GR_TEST_DRAIN_DEADLINE_MS", "1500")]);
    // A client that connects and never sends holds the first generation's
    // single-threaded loop: it cannot finish draining. Once accepted: left in
    // the accept queue, it would hold the heir instead.
    let holder = std::net::TcpStream::connect(server.addr).unwrap();
    assert!(
        testkit::wait_held_by(server.pid, &holder, LOG_WAIT),
        "generation 1 accepted the holding client"
    );
    let first = server.hand_over(libc::SIGUSR2);
    // A restart signal sent to the draining generation says where it belongs;
    // one that comes while it still ends its restart is coalesced into that.
    let points_on = format!(
        "grestart[{}] info: signal {} restarts nothing here: this process drains; pid {} serves",
        first.pid,
        libc::SIGUSR2,
        server.pid
    );
    let coalesced = format!("grestart[{}] info: 1 restart signals arrived", first.pid);
    testkit::kill(first.pid, libc::SIGUSR2);
    let said = server.wait_for_log_any(&[&points_on, &coalesced], LOG_WAIT);
    if said.contains(&coalesced) {
        testkit::kill(first.pid, libc::SIGUSR2);
        server.wait_for_log(&points_on, LOG_WAIT);
    }

    // Not refused: generation 3 serves while generation 1 still drains.
    let second = server.hand_over(libc::SIGUSR2);
    assert!(
        !testkit::wait_exit(&first.exit, Duration::ZERO),
        "generation 1 still drains"
    );

    // The drain deadline ends the first generation although the client stays.
    assert!(
        testkit::wait_exit(&first.exit, Duration::from_secs(10)),
        "the deadline ended the drain"
    );
    server.wait_for_log("drain deadline", LOG_WAIT);
    testkit::reap(first.pid);
    drop(holder);
    server.wait_gone(&second, Duration::from_secs(20));
    server.restart(libc::SIGUSR2);
    server.stop();
}

#[test]
fn the_heir_starts_with_a_clean_signal_state_and_dies_of_sigterm() {
    let flaky = Flaky::new("signals");
    let mut server = flaky.start(&[("GR_TEST_BLOCK_SIGTERM", "1")]);
    let status = |pid: i32, field: &str| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap()
            .to_string();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    let sigterm = 1u64 << (libc::SIGTERM - 1);
    assert_ne!(
        status(server.pid, "SigBlk:") & sigterm,
        0,
        "the first generation blocks SIGTERM"
    );
    server.restart(libc::SIGUSR2);
    assert_eq!(
        status(server.pid, "SigBlk:"),
        0,
        "the heir's signal mask is empty"
    );
    assert_eq!(
        status(server.pid, "SigIgn:"),
        0,
        "the heir ignores no signal"
    );
    let heir = testkit::pidfd(server.pid).unwrap();
    testkit::kill(server.pid, libc::SIGTERM);
    assert!(
        testkit::wait_exit(&heir, Duration::from_secs(5)),
        "SIGTERM kills the heir"
    );
    let status = testkit::reap(server.pid).unwrap();
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
    server.stop();
}

/// With the application configured by `env`, a successor that exits before
/// ready is handled without a hang, and the next restart works.
fn failed_then_good_restart(tag: &str, env: &[(&str, &str)]) {
    let flaky = Flaky::new(tag);
    let mut server = flaky.start(env);
    flaky.set_mode("exit");
    let line = failed_restart(&server);
    assert!(line.contains("before it was ready"), "{line}");
    flaky.set_mode("serve");
    server.restart(libc::SIGUSR2);
    server.stop();
}

#[test]
fn an_application_that_ignores_sigchld_still_restarts() {
    failed_then_good_restart("sigchld", &[("GR_TEST_IGNORE_SIGCHLD", "1")]);
}

#[test]
fn garbage_in_the_environment_is_ignored() {
    let flaky = Flaky::new("garbage");
    for env in [
        [
            ("LISTEN_FDS", "3"),
            ("LISTEN_PID", "1"),
            ("LISTEN_FDNAMES", "a:b:c"),
        ],
        [
            ("LISTEN_FDS", "-1"),
            ("LISTEN_PID", "x"),
            ("GRESTART_READY_FD", "999"),
        ],
        [
            ("LISTEN_FDS", "99999999999999999999"),
            ("LISTEN_PID", ""),
            ("LISTEN_FDNAMES", "::::"),
        ],
    ] {
        let mut server = flaky.start(&env);
        assert_eq!(server.generation, 1);
        server.restart(libc::SIGUSR2);
        server.stop();
    }
}

#[test]
fn two_hundred_restarts_leave_no_trace() {
    let flaky = Flaky::new("hygiene");
    // No load here: a connection in flight would count as an fd.
    let mut server = flaky.start(&[]);
    let addr = server.addr;
    let sample = |pid: i32| {
        // Read one answer to its end: EOF means the server closed its side,
        // so the probes' connections no longer count among its fds.
        use std::io::{Read, Write};
        let mut probe = std::net::TcpStream::connect(addr).unwrap();
        probe
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        probe.read_to_end(&mut Vec::new()).unwrap();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        (fds, field("Threads:"), field("VmRSS:"))
    };
    let mut samples = Vec::new();
    for i in 0..200 {
        server.restart(libc::SIGUSR2);
        if i % 50 == 0 || i == 199 {
            samples.push(sample(server.pid));
        }
    }
    for (i, (fds, threads, rss)) in samples.iter().enumerate() {
        println!("sample {i}: {fds} fds, {threads} threads, {rss} kB RSS");
    }
    let first = samples[0];
    for &(fds, threads, rss) in &samples {
        assert_eq!(
            (fds, threads),
            (first.0, first.1),
            "fds and threads stay flat: {samples:?}"
        );
        assert!(rss < first.2 + 1024, "RSS stays flat: {samples:?}");
    }
    server.stop();
}

#[test]
fn unix_and_udp_sockets_are_handed_over_too() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    let flaky = Flaky::new("sockets");
    let path = flaky.dir.join("http.sock");
    let path_text = path.to_str().unwrap().to_string();
    let mut server = flaky.start(&[("GR_TEST_UNIX", &path_text), ("GR_TEST_UDP", "1")]);
    let port: u16 = server
        .wait_for_log("udp port", LOG_WAIT)
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    udp.connect(("127.0.0.1", port)).unwrap();

    for _ in 0..5 {
        server.restart(libc::SIGUSR2);
        // The Unix path is still bound (never unlinked by the drained parent)
        // and served by the new generation.
        let mut stream = UnixStream::connect(&path).expect("the Unix socket still accepts");
        stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.contains(&format!("X-Pid: {}", server.pid)),
            "{answer}"
        );
        // Datagrams reach the new generation on the same port.
        udp.send(b"ping").unwrap();
        let mut buf = [0u8; 64];
        let n = udp.recv(&mut buf).expect("a UDP answer");
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert_eq!(reply, format!("{} {}", server.pid, server.generation));
    }
    server.stop();
    assert!(path.exists(), "grestart never unlinks a Unix socket path");
}

#[test]
fn concurrent_restart_calls_make_one_hand_over() {
    use std::io::{Read, Write};

    let flaky = Flaky::new("concurrent");
    let mut server = flaky.start(&[]);
    let old_exit = testkit::pidfd(server.pid).unwrap();
    let mut admin = std::net::TcpStream::connect(server.addr).unwrap();
    admin.write_all(b"GET /restart HTTP/1.1\r\n\r\n").unwrap();
    let mut ignored = Vec::new();
    admin.read_to_end(&mut ignored).unwrap();
    let results: Vec<String> = (0..8)
        .map(|_| server.wait_for_log("restart thread:", LOG_WAIT))
        .collect();
    // "restart thread: RESULT ERRNO": the new pid and 0, or -1 and why.
    let handed_over = |r: &&String| !r.contains(": -1 ");
    let successes: Vec<&String> = results.iter().filter(handed_over).collect();
    assert_eq!(
        successes.len(),
        1,
        "exactly one gr_restart() hands over: {results:?}"
    );
    let successor: i32 = successes[0].split(' ').nth(2).unwrap().parse().unwrap();
    for refused in results.iter().filter(|r| r.contains(": -1 ")) {
        // EALREADY while the hand-over runs, ESHUTDOWN once this process drains.
        let errno: i32 = refused.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            [libc::EALREADY, libc::ESHUTDOWN].contains(&errno),
            "{refused}"
        );
    }
    let answer = server.follow_hand_over(&old_exit);
    assert_eq!(answer.generation, 2, "never two successors");
    assert_eq!(answer.pid, successor, "gr_restart() returns the new pid");
    server.stop();
}

#[test]
fn an_application_that_reaps_its_children_itself_still_restarts() {
    let env = [
        ("GR_TEST_REAP_CHILDREN", "1"),
        ("GR_TEST_READY_TIMEOUT_MS", "2000"),
    ];
    failed_then_good_restart("reaper", &env);
}

/// A server that blocks every signal in all its threads (it waits for its
/// own with sigwait or signalfd) still restarts on SIGUSR2: grestart's watcher
/// thread unblocks the restart signal for itself.
#[test]
fn a_server_that_blocks_every_signal_restarts_on_the_signal() {
    let flaky = Flaky::new("blocked");
    let mut server = flaky.start(&[("GR_TEST_BLOCK_ALL_SIGNALS", "1")]);
    for _ in 0..2 {
        server.restart(libc::SIGUSR2);
    }
    server.stop();
}

/// Asks the server for gr_shutdown() ("GET /shutdown"), as an operator's stop would.
fn ask_shutdown(server: &Server) {
    use std::io::{Read, Write};
    let mut admin = std::net::TcpStream::connect(server.addr).unwrap();
    admin.write_all(b"GET /shutdown HTTP/1.1\r\n\r\n").unwrap();
    admin.read_to_end(&mut Vec::new()).unwrap();
}

/// The pid in a log line "successor PID started ...".
fn successor_pid(line: &str) -> i32 {
    let after = line.split("successor ").nth(1).expect("a successor pid");
    after.split(' ').next().unwrap().parse().unwrap()
}

/// gr_shutdown() while a successor is still starting stops that successor
/// before the old generation exits: no orphan serves after its parent was
/// told to stop.
#[test]
fn a_shutdown_during_a_restart_stops_the_starting_successor() {
    let flaky = Flaky::new("stop-during-restart");
    let mut server = flaky.start(&[("GR_TEST_READY_TIMEOUT_MS", "30000")]);
    flaky.set_mode("hang");
    testkit::kill(server.pid, libc::SIGUSR2);
    let successor = successor_pid(&server.wait_for_log("waiting up to", LOG_WAIT));
    server.pids.push(successor); // ended by stop() whatever happens
    let successor_exit = testkit::pidfd(successor).unwrap();
    let parent_exit = testkit::pidfd(server.pid).unwrap();
    ask_shutdown(&server);
    assert!(
        testkit::wait_exit(&parent_exit, Duration::from_secs(10)),
        "the old generation exits"
    );
    assert!(
        testkit::wait_exit(&successor_exit, Duration::ZERO),
        "the successor was stopped before its parent exited"
    );
    assert_eq!(
        testkit::reap(successor),
        None,
        "and reaped by it, not left to us"
    );
    let line = server.wait_for_log("told to stop while successor", LOG_WAIT);
    assert!(line.contains("killed it"), "{line}");
    server.wait_for_log("shutdown returned 0", LOG_WAIT);
    server.stop();
}

/// A successor that says "ready" and dies before the old generation reads it
/// serves nobody: the old generation must not drain for it. The old generation
/// is held stopped (SIGSTOP) while the successor says "ready" and exits, so
/// that it finds both at once when it goes on.
#[test]
fn a_successor_that_says_ready_and_dies_is_not_taken_for_ready() {
    let flaky = Flaky::new("ready-then-die");
    let fifo = flaky.dir.join("go");
    let fifo_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo_path.as_ptr(), 0o600) }, 0);
    let mut server = flaky.start(&[("GR_TEST_FIFO", fifo.to_str().unwrap())]);
    flaky.set_mode("readydie");
    testkit::kill(server.pid, libc::SIGUSR2);
    let successor = successor_pid(&server.wait_for_log("waiting up to", LOG_WAIT));
    server.pids.push(successor);
    let successor_exit = testkit::pidfd(successor).unwrap();
    testkit::kill(server.pid, libc::SIGSTOP);
    let mut status = 0;
    // SAFETY: waitpid on our own child, the first generation.
    let stopped = unsafe { libc::waitpid(server.pid, &mut status, libc::WUNTRACED) };
    assert!(
        stopped == server.pid && libc::WIFSTOPPED(status),
        "{status:#x}"
    );
    // The successor waits on the FIFO; this lets it say "ready" and exit.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .and_then(|mut go| std::io::Write::write_all(&mut go, b"g"))
        .unwrap();
    assert!(
        testkit::wait_exit(&successor_exit, Duration::from_secs(10)),
        "the successor said ready and exited"
    );
    testkit::kill(server.pid, libc::SIGCONT);
    let line = server.wait_for_log("restart failed", LOG_WAIT);
    assert!(
        line.contains("said it was ready, then exited with status 0"),
        "{line}"
    );
    let answer = server.probe(Duration::from_secs(5)).unwrap();
    assert_eq!(answer.pid, server.pid, "the old generation serves on");
    assert!(testkit::zombie_children(server.pid).is_empty());
    flaky.set_mode("serve");
    server.restart(libc::SIGUSR2);
    server.stop();
}

/// An heir whose predecessor died before the heir's first grestart call (the
/// heir is reparented) is all that serves: it must serve on, adopting
/// connections as the examples do, and say who started it.
#[test]
fn an_heir_whose_predecessor_died_early_serves_on() {
    let flaky = Flaky::new("orphan");
    let mut server = flaky.start(&[("GR_TEST_READY_TIMEOUT_MS", "30000")]);
    let first = server.pid;
    flaky.set_mode("orphan");
    testkit::kill(first, libc::SIGUSR2);
    let lines = server.wait_for_logs(&["waiting up to", "orphan waiting"], LOG_WAIT);
    let heir = successor_pid(&lines[0]);
    server.pids.push(heir);
    flaky.set_mode("serve");
    testkit::kill(first, libc::SIGKILL);
    testkit::reap(first);
    let line = server.wait_for_log("generation 2 started by pid", LOG_WAIT);
    assert!(
        line.contains(&format!("started by pid {first}, which has exited already")),
        "{line}"
    );
    let answer = server
        .probe(Duration::from_secs(10))
        .expect("the heir serves");
    assert_eq!((answer.pid, answer.generation), (heir, 2));
    server.pid = heir;
    server.generation = 2;
    server.restart(libc::SIGUSR2);
    server.stop();
}

/// A child the old generation forks without exec while it drains holds its
/// end of the link to the heir after the old generation exited: the heir
/// must still see that its predecessor is gone, and restart.
#[test]
fn a_child_forked_while_draining_does_not_hold_up_the_next_restart() {
    let flaky = Flaky::new("drain-child");
    let mut server = flaky.start(&[("GR_TEST_FORK_ON_DRAIN", "1")]);
    server.restart(libc::SIGUSR2);
    let line = server.wait_for_log("drain child", LOG_WAIT);
    let child: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    server.pids.push(child); // ended by stop()
    server.restart(libc::SIGUSR2);
    server.stop();
}

/// `SigIgn` of `pid` from /proc: the signals it ignores, bit `signo - 1`,
/// but the C library's own 32 and 33, which Rust's `Command` (glibc's
/// `posix_spawn`) hands this test's children ignored.
fn ignored_signals(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("SigIgn:")).unwrap();
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap() & !(3 << 31)
}

/// What systemd's `IgnoreSIGPIPE=yes` and `nohup` give the first generation
/// stays in every heir; the restart signal is handled, never ignored.
#[test]
fn signals_ignored_at_start_stay_ignored_in_every_heir() {
    use std::os::unix::process::CommandExt;
    let flaky = Flaky::new("start-ignored");
    let mut command = flaky.command(&[]);
    // SAFETY: between fork and exec only signal(2), async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut server = Server::launch(command);
    let started = (1u64 << (libc::SIGPIPE - 1)) | (1u64 << (libc::SIGHUP - 1));
    assert_eq!(ignored_signals(server.pid), started, "the first generation");
    for restart in 1..=5 {
        server.restart(libc::SIGUSR2);
        assert_eq!(
            ignored_signals(server.pid),
            started,
            "generation {} ignores what the first was started ignoring",
            restart + 1
        );
        assert!(testkit::catches(server.pid, libc::SIGUSR2));
    }
    server.stop();
}

/// `./server & kill -USR2 $!`: a restart signal that arrives before the
/// program's first grestart call neither kills it nor is taken for later.
#[test]
fn a_restart_signal_before_grestart_is_set_up_never_kills() {
    let flaky = Flaky::new("early-signal");
    let fifo = flaky.dir.join("hold");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let mut command = flaky.command(&[("GR_TEST_HOLD_FIFO", fifo.to_str().unwrap())]);
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    // Opening the FIFO returns once the program has opened it: it is in
    // main, before any grestart call, its library's constructor run.
    let mut hold = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    testkit::kill(child.id() as i32, libc::SIGUSR2);
    testkit::kill(child.id() as i32, libc::SIGUSR2);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the early restart signal did not kill the program"
    );
    std::io::Write::write_all(&mut hold, b"go").unwrap();
    drop(hold);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("listening on"), "it serves: {line:?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "still alive once set up"
    );
    testkit::kill(child.id() as i32, libc::SIGKILL);
    child.wait().unwrap();
}

/// A server that writes with write(2) and relies on SIGPIPE being ignored
/// (systemd's default) survives, in every generation, a client that has
/// gone away: the heirs keep the ignore.
#[test]
fn an_heir_started_ignoring_sigpipe_survives_a_client_gone_mid_response() {
    use std::os::unix::process::CommandExt;
    let flaky = Flaky::new("sigpipe");
    let mut command = flaky.command(&[("GR_TEST_PLAIN_WRITE", "1")]);
    // SAFETY: between fork and exec only signal(2), async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut server = Server::launch(command);
    for _ in 0..2 {
        server.restart(libc::SIGUSR2);
    }
    let heir = testkit::pidfd(server.pid).unwrap();
    for _ in 0..20 {
        use std::io::Write;
        let mut gone = std::net::TcpStream::connect(server.addr).unwrap();
        gone.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Closed with a reset at once: the server's second write meets EPIPE.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a linger struct of the size passed.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&gone),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(gone);
    }
    let answer = server.probe(Duration::from_secs(5)).unwrap();
    assert_eq!(answer.pid, server.pid, "generation 3 serves on");
    assert!(
        !testkit::wait_exit(&heir, Duration::ZERO),
        "no SIGPIPE killed the heir"
    );
    server.stop();
}
