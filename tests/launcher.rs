//! `grestart run --listen`: graceful restarts for programs that do not link
//! grestart but take their sockets the systemd way (`LISTEN_FDS`). Each runs
//! as a container would run it (the launcher as PID 1 of a PID namespace):
//! one written here that says `READY=1`, the same one silent (`--ready-delay`),
//! and gunicorn, a real third-party server. 20 restarts each under load,
//! nothing fails; a new instance that fails leaves the old one serving; a
//! storm of restart signals is one restart at a time.

mod support;

use std::ffi::{OsStr, OsString};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use support::{Container, Load, TempDir};

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
        support::repo()
            .join("tests/python/listen_fds_server.py")
            .into(),
    ];
    command.extend(args.iter().map(OsString::from));
    command
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
    let gunicorn = support::python_venv().with_file_name("gunicorn");
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
        support::repo().join("tests/python").into(),
        "wsgi_app:app".into(),
    ];
    // The launcher, gunicorn's master and its two workers.
    restarts_under_load(start(&run(&["--listen", &listen], &program), Some(addr)), 4);
}

#[test]
fn a_new_instance_that_fails_leaves_the_old_one_serving() {
    let dir = TempDir::new("launcher-failures");
    let mode = dir.join("mode");
    let mut command = vec![OsString::from("env"), {
        let mut entry = OsString::from("LISTEN_FDS_SERVER_MODE=");
        entry.push(&mode);
        entry
    }];
    command.extend(run(
        &["--listen", "127.0.0.1:0", "--ready-timeout", "1"],
        &listen_fds_server(&[]),
    ));
    let mut container = start(&command, None);
    let serving = container.pid;
    let load = Load::start(container.addr, 2, 2);

    std::fs::write(&mode, "exit").unwrap();
    support::kill(container.init, libc::SIGUSR2);
    container.log.wait_for(
        "exited with status 3 before it was ready",
        1,
        Duration::from_secs(20),
    );
    container.settles_to(2, false);
    assert_eq!(
        container.answer().pid,
        serving,
        "the old instance serves on"
    );

    std::fs::write(&mode, "hang").unwrap();
    support::kill(container.init, libc::SIGUSR2);
    container.log.wait_for(
        "was not ready within 1s; killed it",
        1,
        Duration::from_secs(20),
    );
    container.settles_to(2, false);
    assert_eq!(
        container.answer().pid,
        serving,
        "the old instance serves on"
    );

    // Nothing of the failures is left: the next restart works.
    std::fs::write(&mode, "serve").unwrap();
    container.restart();
    container.settles_to(2, false);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert!(container.stop().success());
}

#[test]
fn a_storm_of_restart_signals_is_one_restart_at_a_time() {
    let mut container = start(
        &run(&["--listen", "127.0.0.1:0"], &listen_fds_server(&[])),
        None,
    );
    let load = Load::start(container.addr, 2, 2);
    for _ in 0..50 {
        support::kill(container.init, libc::SIGUSR2);
    }
    container
        .log
        .wait_for("coalesced into it", 1, Duration::from_secs(20));
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
    support::build_c_example(&binary, 1);
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
    support::kill(container.init, libc::SIGTERM);
    seen.push(receive());
    assert!(seen[3].contains("STOPPING=1"), "{seen:?}");
    assert!(container.stop().success());
    assert!(
        seen.iter().all(|m| !m.contains("MAINPID")),
        "the launcher stays the main pid: {seen:?}"
    );
}
