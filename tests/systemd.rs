//! Operations: systemd's notification protocol across a restart, the PID
//! file across restarts and failed restarts, and socket activation by
//! systemd-socket-activate followed by restarts under load.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use testkit::{Load, Server, TempDir};

fn flaky(dir: &TempDir) -> PathBuf {
    let binary = dir.join("flaky_server");
    let source = testkit::repo().join("tests/c/flaky_server.c");
    testkit::compile("cc", &[&source], &binary, &["-std=c99", "-pthread"]);
    binary
}

/// A datagram socket in `dir` to stand for systemd's NOTIFY_SOCKET.
fn notify_socket(dir: &TempDir) -> (PathBuf, UnixDatagram) {
    let path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (path, notify)
}

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn systemd_follows_the_new_main_pid() {
    let dir = TempDir::new("notify");
    let binary = flaky(&dir);
    let (path, notify) = notify_socket(&dir);
    testkit::become_subreaper();
    let mut server = Server::start(
        &binary,
        &[],
        "127.0.0.1:0",
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let first = server.pid;
    assert_eq!(next_message(&notify), format!("MAINPID={first}\nREADY=1"));
    server.restart(libc::SIGUSR2);
    let reloading = next_message(&notify);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    // The heir names itself main pid before its parent exits.
    assert_eq!(
        next_message(&notify),
        format!("MAINPID={}\nREADY=1", server.pid)
    );
    server.stop();
}

/// A successor may name itself main pid and still fail (here: its "ready"
/// never reaches the parent, which times it out and kills it). systemd must
/// then be told the parent is the main pid again, or it would take the dead
/// successor's exit for the service's.
#[test]
fn after_a_failed_restart_systemd_follows_the_parent_again() {
    let dir = TempDir::new("notify-failed");
    let binary = flaky(&dir);
    let (path, notify) = notify_socket(&dir);
    let mode = dir.join("mode");
    std::fs::write(&mode, "serve").unwrap();
    testkit::become_subreaper();
    let server = Server::start(
        &binary,
        &[],
        "127.0.0.1:0",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("GR_TEST_MODE_FILE", mode.to_str().unwrap()),
            ("GR_TEST_READY_TIMEOUT_MS", "500"),
            ("GRESTART_LOG", "info"),
        ],
    );
    let parent = server.pid;
    assert_eq!(next_message(&notify), format!("MAINPID={parent}\nREADY=1"));
    std::fs::write(&mode, "lost").unwrap();
    testkit::kill(parent, libc::SIGUSR2);
    assert!(next_message(&notify).starts_with("RELOADING=1\n"));
    let heir = next_message(&notify);
    assert!(
        heir.starts_with("MAINPID=") && heir != format!("MAINPID={parent}\nREADY=1"),
        "{heir}"
    );
    server.wait_for_log("restart failed", Duration::from_secs(20));
    assert_eq!(next_message(&notify), format!("MAINPID={parent}\nREADY=1"));
    server.stop();
}

#[test]
fn the_pid_file_names_the_serving_generation() {
    let dir = TempDir::new("pidfile");
    let binary = flaky(&dir);
    let pid_file = dir.join("server.pid");
    let mode = dir.join("mode");
    std::fs::write(&mode, "serve").unwrap();
    testkit::become_subreaper();
    let env = [
        ("GR_TEST_PID_FILE", pid_file.to_str().unwrap()),
        ("GR_TEST_MODE_FILE", mode.to_str().unwrap()),
        ("GR_TEST_READY_TIMEOUT_MS", "1000"),
        ("GRESTART_LOG", "info"),
    ];
    let mut server = Server::start(&binary, &[], "127.0.0.1:0", &env);
    let read = || {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap()
    };
    assert_eq!(read(), server.pid);
    server.restart(libc::SIGUSR2);
    assert_eq!(
        read(),
        server.pid,
        "the heir wrote it; the drained parent left it"
    );
    std::fs::write(&mode, "exit").unwrap();
    testkit::kill(server.pid, libc::SIGUSR2);
    server.wait_for_log("restart failed", Duration::from_secs(20));
    assert_eq!(read(), server.pid, "a failed successor never wrote it");
    // A successor that wrote it (gr_ready) but never told the parent, and was
    // killed after the ready timeout: the file names the parent again.
    std::fs::write(&mode, "lost").unwrap();
    testkit::kill(server.pid, libc::SIGUSR2);
    server.wait_for_log("ready, generation 3", Duration::from_secs(20));
    server.wait_for_log("restart failed", Duration::from_secs(20));
    assert_eq!(read(), server.pid, "the serving generation is named again");
    // A clean stop removes the file that names the stopping process.
    let exit = testkit::pidfd(server.pid).unwrap();
    {
        use std::io::{Read, Write};
        let mut admin = std::net::TcpStream::connect(server.addr).unwrap();
        admin.write_all(b"GET /shutdown HTTP/1.1\r\n\r\n").unwrap();
        admin.read_to_end(&mut Vec::new()).unwrap();
    }
    assert!(testkit::wait_exit(&exit, Duration::from_secs(10)));
    assert!(!pid_file.exists(), "a clean stop removes the PID file");
    server.stop();
}

/// Starts `binary SERVER_ADDRESS` under `systemd-socket-activate -l LISTEN`,
/// which binds LISTEN and, on the first connection (made here, to
/// 127.0.0.1:port), execs the server with the socket as fd 3 and LISTEN_FDS.
fn socket_activated(
    binary: &std::path::Path,
    listen: &str,
    server_address: &str,
    port: u16,
) -> Server {
    testkit::become_subreaper();
    let activation = std::thread::spawn(move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Refused until the activator has bound the address.
            match testkit::get(addr, true) {
                Err(e) if e.contains("refused") && std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                answered => return answered,
            }
        }
    });
    let args = [OsStr::new("-l"), OsStr::new(listen), binary.as_os_str()];
    let server = Server::start(
        std::path::Path::new("systemd-socket-activate"),
        &args,
        server_address,
        &[("GRESTART_LOG", "info")],
    );
    server.wait_for_log("socket-activated", Duration::from_secs(20));
    activation
        .join()
        .unwrap()
        .expect("the activating request is answered");
    server
}

#[test]
fn socket_activated_by_systemd_then_restarted_under_load() {
    let dir = TempDir::new("activate");
    let binary = flaky(&dir);
    let port = testkit::free_port();
    let address = format!("127.0.0.1:{port}");
    let mut server = socket_activated(&binary, &address, &address, port);
    let load = Load::start(server.addr, 0, 3);
    for _ in 0..5 {
        server.restart(libc::SIGUSR2);
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    server.stop();
}

/// systemd's `ListenStream=PORT` (and `systemd-socket-activate -l PORT`) is
/// one dual-stack `[::]:PORT` socket. Each way of asking for "every address on
/// PORT" must claim it, never fail with EADDRINUSE beside it.
#[test]
fn a_port_only_socket_unit_serves_every_wildcard_spelling() {
    let dir = TempDir::new("activate-port");
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    for spelling in ["0.0.0.0:{}", ":{}", "[::]:{}"] {
        let port = testkit::free_port();
        let requested = spelling.replace("{}", &port.to_string());
        let mut server = socket_activated(&binary, &port.to_string(), &requested, port);
        assert_eq!(
            server.addr.port(),
            port,
            "{requested}: serves the activated port"
        );
        // IPv4 clients on the dual-stack socket.
        server.addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let load = Load::start(server.addr, 1, 1);
        server.restart(libc::SIGUSR2);
        let stats = load.finish();
        assert_eq!(stats.failed, 0, "{requested}: {:?}", stats.failures);
        server.stop();
    }
}
