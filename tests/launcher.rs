//! `grestart run --listen`: graceful restarts for programs that do not link
//! grestart but take their sockets the systemd way (`LISTEN_FDS`). Each runs
//! as a container would run it (the launcher as PID 1 of a PID namespace):
//! one written here that says `READY=1`, the same one silent (`--ready-delay`),
//! and gunicorn, a real third-party server. 20 restarts each under load,
//! nothing fails; a new instance that fails leaves the old one serving; a
//! storm of restart signals is one restart at a time.

use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use testkit::{Container, HungMount, Load, TempDir};

const RESTARTS: usize = 20;

fn launcher() -> OsString {
    env!("CARGO_BIN_EXE_grestart").into()
}

/// `grestart run OPTIONS -- PROGRAM...`
fn run(options: &[&str], program: &[OsString]) -> Vec<OsString> {
    let mut command = vec![launcher(), "run".into()];
    command.extend(options.iter().map(OsString::from));
    command.push("--".into());
    command.extend(program.iter().cloned());
    command
}

/// The server written for these tests (`tests/python/listen_fds_server.py`).
fn listen_fds_server(args: &[&str]) -> Vec<OsString> {
    let mut command: Vec<OsString> = vec![
        "python3".into(),
        testkit::repo()
            .join("tests/python/listen_fds_server.py")
            .into(),
    ];
    command.extend(args.iter().map(OsString::from));
    command
}

/// `command` with `LISTEN_FDS_SERVER_MODE` naming `mode`, the file whose
/// content tells each starting instance of the test server what to do.
fn with_mode_file(mode: &std::path::Path, command: Vec<OsString>) -> Vec<OsString> {
    let mut entry = OsString::from("LISTEN_FDS_SERVER_MODE=");
    entry.push(mode);
    let mut with = vec![OsString::from("env"), entry];
    with.extend(command);
    with
}

fn start(command: &[OsString], addr: Option<SocketAddr>) -> Container {
    let args: Vec<&OsStr> = command.iter().map(OsString::as_os_str).collect();
    Container::start_on(&args, addr)
}

/// 20 restarts under load; after each the old instance is gone (the launcher
/// and the new one are left: `processes` in all); SIGTERM ends the container
/// with status 0.
fn restarts_under_load(mut container: Container, processes: usize) {
    let load = Load::start(container.addr, 4, 4);
    for _ in 0..RESTARTS {
        container.restart();
        container.settles_to(processes, false);
    }
    let stats = load.finish();
    println!("{} requests answered, {} failed", stats.ok, stats.failed);
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert!(stats.by_pid.len() > RESTARTS, "every instance served");
    let status = container.stop();
    assert!(
        status.success(),
        "the container ends with status 0: {status:?}"
    );
}

#[test]
fn a_server_that_says_ready_restarts_under_load() {
    restarts_under_load(
        start(
            &run(&["--listen", "127.0.0.1:0"], &listen_fds_server(&[])),
            None,
        ),
        2,
    );
}

#[test]
fn a_server_that_never_notifies_restarts_after_the_ready_delay() {
    restarts_under_load(
        start(
            &run(
                &["--listen", "127.0.0.1:0", "--ready-delay", "0.5"],
                &listen_fds_server(&["--no-notify"]),
            ),
            None,
        ),
        2,
    );
}

#[test]
fn gunicorn_restarts_under_load() {
    let gunicorn = testkit::python_venv().with_file_name("gunicorn");
    assert!(
        gunicorn.exists(),
        "scripts/python-venv installs gunicorn into {}",
        gunicorn.display()
    );
    // A free port: gunicorn prints its address to no pipe we read.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let listen = addr.to_string();
    let program: Vec<OsString> = vec![
        gunicorn.into(),
        "--workers".into(),
        "2".into(),
        "--no-control-socket".into(),
        "--chdir".into(),
        testkit::repo().join("tests/python").into(),
        "wsgi_app:app".into(),
    ];
    // The launcher, gunicorn's master and its two workers.
    restarts_under_load(start(&run(&["--listen", &listen], &program), Some(addr)), 4);
}

#[test]
fn a_new_instance_that_fails_leaves_the_old_one_serving() {
    let dir = TempDir::new("launcher-failures");
    let mode = dir.join("mode");
    let command = with_mode_file(
        &mode,
        run(
            &["--listen", "127.0.0.1:0", "--ready-timeout", "1"],
            &listen_fds_server(&[]),
        ),
    );
    let mut container = start(&command, None);
    let serving = container.pid;
    let load = Load::start(container.addr, 2, 2);

    // A new instance started in `what` mode fails as `logged` says; the old one serves on.
    let fails = |what: &str, logged: &str| {
        std::fs::write(&mode, what).unwrap();
        testkit::kill(container.init, libc::SIGUSR2);
        container.log.wait_for(logged, 1, Duration::from_secs(20));
        container.settles_to(2, false);
        assert_eq!(
            container.answer().pid,
            serving,
            "the old instance serves on"
        );
    };
    fails("exit", "exited with status 3 before it was ready");
    fails("hang", "was not ready within 1s; killed it");

    // Nothing of the failures is left: the next restart works.
    std::fs::write(&mode, "serve").unwrap();
    container.restart();
    container.settles_to(2, false);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert!(container.stop().success());
}

/// An instance killed with SIGKILL (a crash outside any restart): the
/// launcher, which holds the sockets, starts the program again on them.
/// Nothing is refused; only what the killed instance held fails.
#[test]
fn a_killed_instance_is_started_again_on_the_sockets_the_launcher_holds() {
    let mut container = start(
        &run(&["--listen", "127.0.0.1:0"], &listen_fds_server(&[])),
        None,
    );
    let load = Load::start(container.addr, 2, 2);
    let killed = container.pid;
    testkit::kill(container.host_pid(killed), libc::SIGKILL);
    container
        .log
        .wait_for("was killed by signal 9", 1, Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    container.pid = loop {
        let answer = container.answer();
        if answer.pid != killed {
            break answer.pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the killed instance answers"
        );
    };
    container.settles_to(2, false);
    let stats = load.finish();
    assert_eq!(stats.refused, 0, "refused: {:?}", stats.failures);
    assert!(stats.failed <= 4, "{:?}", stats.failures);
    assert!(container.stop().success());
}

/// A deploy flips `current` onto a network mount that hangs: the new
/// instance's exec never ends. The launcher (PID 1) kills it at the ready
/// timeout instead of hanging with it, the old instance serves on, and after
/// the flip back the restart works.
#[test]
fn a_new_instance_whose_exec_hangs_is_killed_at_the_ready_timeout() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = TempDir::new("launcher-hung");
    let release = dir.join("releases/v1");
    std::fs::create_dir_all(&release).unwrap();
    let server = release.join("server");
    std::fs::copy(
        testkit::repo().join("tests/python/listen_fds_server.py"),
        &server,
    )
    .unwrap();
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755)).unwrap();
    let flip_to = |target: &str| {
        let fresh = dir.join("current.new");
        symlink(target, &fresh).unwrap();
        std::fs::rename(&fresh, dir.join("current")).unwrap();
    };
    flip_to("releases/v1");
    let _hung = HungMount::new(&dir.join("hung"));
    let program = [dir.join("current/server").into_os_string()];
    let options = ["--listen", "127.0.0.1:0", "--ready-timeout", "1"];
    let mut container = start(&run(&options, &program), None);
    let serving = container.pid;
    let load = Load::start(container.addr, 2, 2);

    flip_to("hung");
    testkit::kill(container.init, libc::SIGUSR2);
    container
        .log
        .wait_for("had not finished its exec", 1, Duration::from_secs(20));
    container.settles_to(2, false);
    assert_eq!(
        container.answer().pid,
        serving,
        "the old instance serves on"
    );

    flip_to("releases/v1");
    container.restart();
    container.settles_to(2, false);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert!(container.stop().success());
}

#[test]
fn a_storm_of_restart_signals_is_one_restart_at_a_time() {
    let dir = TempDir::new("launcher-storm");
    let mode = dir.join("mode");
    let command = with_mode_file(
        &mode,
        run(
            &["--listen", "127.0.0.1:0", "--ready-timeout", "3"],
            &listen_fds_server(&[]),
        ),
    );
    let mut container = start(&command, None);
    let load = Load::start(container.addr, 2, 2);
    // A new instance that never gets ready keeps the restart under way, so
    // that the second storm certainly meets it.
    std::fs::write(&mode, "hang").unwrap();
    for _ in 0..25 {
        testkit::kill(container.init, libc::SIGUSR2);
    }
    container
        .log
        .wait_for("started, waiting", 1, Duration::from_secs(20));
    for _ in 0..25 {
        testkit::kill(container.init, libc::SIGUSR2);
    }
    container
        .log
        .wait_for("coalesced into it", 1, Duration::from_secs(20));
    container
        .log
        .wait_for("was not ready within 3s", 1, Duration::from_secs(20));
    std::fs::write(&mode, "serve").unwrap();
    let restarted = container.restart(); // one more, once the storm has passed
    container.settles_to(2, false);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    // Never two new instances at once: each start is followed by its outcome
    // before the next one.
    let mut pending = false;
    let lines = container.log.lines();
    for line in &lines {
        if line.contains("new instance") && line.contains("started") {
            assert!(!pending, "two restarts overlapped:\n{}", lines.join("\n"));
            pending = true;
        } else if line.contains("ready after") || line.contains("restart failed") {
            pending = false;
        }
    }
    let started = lines
        .iter()
        .filter(|l| l.contains("started, waiting"))
        .count();
    assert!(started < 50, "the storm was coalesced ({started} restarts)");
    println!("{started} restarts for 51 signals; the last took {restarted:?}");
    assert!(container.stop().success());
}

/// Under systemd (a `NOTIFY_SOCKET` of its own) the launcher stays the main
/// process: it relays the generations' `READY=1`, `RELOADING=1` and
/// `STOPPING=1` upward, never their `MAINPID=`.
#[test]
fn under_a_service_manager_the_launcher_relays_readiness_not_pids() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("launcher-notify");
    let path = dir.join("notify");
    let manager = UnixDatagram::bind(&path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let receive = || {
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).expect("a notification within 20 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    let mut notify_socket = OsString::from("NOTIFY_SOCKET=");
    notify_socket.push(&path);
    let mut command = vec!["env".into(), notify_socket];
    command.extend(run(&[], &[binary.into()]));
    command.push("127.0.0.1:0".into());
    let mut container = start(&command, None);
    let mut seen = vec![receive()];
    assert!(seen[0].contains("READY=1"), "{seen:?}");
    container.restart();
    seen.push(receive());
    seen.push(receive());
    assert!(seen[1].contains("RELOADING=1"), "{seen:?}");
    assert!(seen[2].contains("READY=1"), "{seen:?}");
    container.settles_to(2, false);
    testkit::kill(container.init, libc::SIGTERM);
    // STATUS= lines (the restart's outcome) may come first.
    while !seen.last().unwrap().contains("STOPPING=1") {
        seen.push(receive());
    }
    assert!(container.stop().success());
    assert!(
        seen.iter().all(|m| !m.contains("MAINPID")),
        "the launcher stays the main pid: {seen:?}"
    );
}

/// `grestart restart ARGS...` as an operator (or systemd's `ExecReload=`)
/// runs it, inside the PID namespace of `inside` when given (as `docker exec`
/// or `kubectl exec` would): its exit status, stdout and stderr.
fn grestart_restart(args: &[&str], inside: Option<&Container>) -> (i32, String, String) {
    let mut command = match inside {
        Some(container) => {
            let mut nsenter = std::process::Command::new("nsenter");
            nsenter
                .args(["-t", &container.init.to_string(), "-p", "-m", "--"])
                .arg(launcher());
            nsenter
        }
        None => std::process::Command::new(launcher()),
    };
    let out = command.arg("restart").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn set_mode_bits(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The restart's outcome reaches whoever asked: the new pid and status 0, or
/// why it failed and status 1 while the server serves on; bad usage is 2.
#[test]
fn grestart_restart_reports_the_outcome() {
    let dir = TempDir::new("restart-command");
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    testkit::become_subreaper();
    let mut server = testkit::Server::start(&binary, &[], "127.0.0.1:0", &[]);
    let load = Load::start(server.addr, 2, 2);

    let old = testkit::pidfd(server.pid).unwrap();
    let (status, stdout, stderr) = grestart_restart(&["--pid", &server.pid.to_string()], None);
    assert_eq!(status, 0, "{stderr}");
    let answer = server.follow_hand_over(&old);
    assert_eq!(stdout, answer.pid.to_string(), "it prints the new pid");

    set_mode_bits(&binary, 0o644);
    let pid_file = dir.join("pid");
    std::fs::write(&pid_file, format!("{}\n", server.pid)).unwrap();
    let (status, stdout, stderr) =
        grestart_restart(&["--pid-file", pid_file.to_str().unwrap()], None);
    assert_eq!((status, stdout.as_str()), (1, ""), "{stderr}");
    assert!(
        stderr.contains("could not execute") && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert_eq!(
        server.probe(Duration::from_secs(5)).unwrap().pid,
        server.pid
    );
    set_mode_bits(&binary, 0o755);

    for (args, expected) in [
        (&[][..], 2),
        (&["--pid", "0"][..], 2),
        (&["--pid", "1", "--pid-file", "/x"][..], 2),
        (&["--pid", "2147483646"][..], 1), // no such process
        (&["--pid-file", "/nonexistent/pid"][..], 1),
    ] {
        let (status, _, stderr) = grestart_restart(args, None);
        assert_eq!(status, expected, "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?} says why");
    }
    server.restart(libc::SIGUSR2); // and the signal still works
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    server.stop();
}

/// In a container, `kubectl exec POD -- grestart restart --pid 1`: the
/// launcher (PID 1) sends the request on to the generation that serves, or,
/// holding the sockets of a program that does not link grestart, restarts it
/// and reports the outcome itself.
#[test]
fn grestart_restart_through_the_launcher() {
    let dir = TempDir::new("restart-through");
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    let mut command = run(&[], &[binary.clone().into()]);
    command.push("127.0.0.1:0".into());
    let mut linked = start(&command, None);
    let (status, stdout, stderr) = grestart_restart(&["--pid", "1"], Some(&linked));
    assert_eq!(status, 0, "{stderr}");
    let before = linked.pid;
    let answer = linked.answer_from(stdout.parse().expect("it prints the new pid"));
    assert_ne!(answer.pid, before);
    linked.pid = answer.pid;
    linked.settles_to(2, false);
    assert!(linked.stop().success());

    let mode = dir.join("mode");
    let command = with_mode_file(
        &mode,
        run(&["--listen", "127.0.0.1:0"], &listen_fds_server(&[])),
    );
    let standalone = start(&command, None);
    let (status, stdout, stderr) = grestart_restart(&["--pid", "1"], Some(&standalone));
    assert_eq!(status, 0, "{stderr}");
    standalone.answer_from(stdout.parse().expect("it prints the new pid"));
    standalone.settles_to(2, false);
    std::fs::write(&mode, "exit").unwrap();
    let (status, _, stderr) = grestart_restart(&["--pid", "1"], Some(&standalone));
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("exited with status 3"), "{stderr}");
    assert!(standalone.stop().success());
}
