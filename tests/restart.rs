//! Whole-process restarts under load: the C, C++ and Rust examples each restart
//! 20 times while clients hammer them (keep-alive and one connection per
//! request), halfway onto a rebuilt binary with another version. Nothing may
//! fail, every old generation must exit, and nothing may be left behind.

use std::ffi::OsStr;
use std::io::BufReader;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use testkit::{Server, TempDir};

const RESTARTS: usize = 20;

/// Restarts `binary` (which answers as version "1") `RESTARTS` times under
/// load; `swap_in_v2` replaces it on disk by a version "2" halfway.
fn restarts_under_load(binary: &Path, swap_in_v2: impl FnOnce()) {
    restarts_under_load_checking(binary, Some(swap_in_v2));
}

/// [`restarts_under_load`] for a server without `X-Version` (a quick start).
fn quick_start_restarts_under_load(binary: &Path) {
    restarts_under_load_checking(binary, None::<fn()>);
}

fn restarts_under_load_checking(binary: &Path, swap_in_v2: Option<impl FnOnce()>) {
    let mut command = Command::new(binary);
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    testkit::restarts_of(command, RESTARTS, swap_in_v2);
}

#[test]
fn c_example_restarts_under_load() {
    let dir = TempDir::new("restart-c");
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    restarts_under_load(&binary, || testkit::build_c_example(&binary, 2));
}

#[test]
fn prefork_example_restarts_under_load() {
    let dir = TempDir::new("restart-prefork");
    let binary = dir.join("prefork_server");
    testkit::build_prefork_example(&binary, 1);
    restarts_under_load(&binary, || testkit::build_prefork_example(&binary, 2));
}

#[test]
fn prefork_workers_answer_for_their_master() {
    let dir = TempDir::new("prefork-workers");
    let binary = dir.join("prefork_server");
    testkit::build_prefork_example(&binary, 1);
    testkit::become_subreaper();
    let mut server = Server::start(&binary, &[] as &[&OsStr], "127.0.0.1:0", &[]);
    let mut workers = std::collections::HashSet::new();
    for _ in 0..40 {
        let answer = testkit::get(server.addr, true).expect("an answer");
        assert_eq!(answer.pid, server.pid, "X-Pid names the master");
        assert!(answer.worker_pid > 0 && answer.worker_pid != server.pid);
        workers.insert(answer.worker_pid);
    }
    println!("workers seen: {workers:?}");
    let old_workers = workers.clone();
    let restart = server.restart(libc::SIGUSR2);
    // The old master exited after its workers: none of them answers or lives.
    let answer = testkit::get(server.addr, true).expect("an answer");
    assert_eq!(answer.pid, restart.pid);
    assert!(!old_workers.contains(&answer.worker_pid));
    for worker in old_workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{worker}")).exists(),
            "old worker {worker} is gone"
        );
    }
    server.stop();
}

#[test]
fn cpp_example_restarts_under_load() {
    let dir = TempDir::new("restart-cpp");
    let binary = dir.join("http_server_cpp");
    testkit::build_cpp_example(&binary, 1);
    restarts_under_load(&binary, || testkit::build_cpp_example(&binary, 2));
}

#[test]
fn rust_example_restarts_under_load() {
    let dir = TempDir::new("restart-rust");
    let binary = dir.join("http_server");
    testkit::build_rust_example("http_server", &[], &binary, 1);
    restarts_under_load(&binary, || {
        testkit::build_rust_example("http_server", &[], &binary, 2)
    });
}

/// The quick starts of the README, blocking thread-per-connection servers,
/// lose nothing either: the accept loop ends on the hand-over and shutdown
/// waits for the connections in flight.
#[test]
fn c_quick_start_restarts_under_load() {
    compiled_quick_start_restarts_under_load("cc", "examples/c/quickstart.c", "-std=c99");
}

#[test]
fn cpp_quick_start_restarts_under_load() {
    compiled_quick_start_restarts_under_load("c++", "examples/cpp/quickstart.cpp", "-std=c++17");
}

fn compiled_quick_start_restarts_under_load(compiler: &str, source: &str, standard: &str) {
    let dir = TempDir::new(&format!("quickstart-{compiler}"));
    let binary = dir.join("quickstart");
    let source = testkit::repo().join(source);
    testkit::compile(compiler, &[&source], &binary, &[standard, "-pthread"]);
    quick_start_restarts_under_load(&binary);
}

#[test]
fn rust_quick_start_restarts_under_load() {
    let dir = TempDir::new("quickstart-rust");
    let binary = dir.join("quickstart");
    testkit::build_rust_example("quickstart", &[], &binary, 1);
    quick_start_restarts_under_load(&binary);
}

#[test]
fn python_examples_restart_under_load() {
    for script in ["http_server.py", "asyncio_server.py", "quickstart.py"] {
        let mut command = testkit::python_example(script);
        command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
        testkit::restarts_of(command, RESTARTS, None::<fn()>);
    }
}

/// The threaded Python example writes an answer's head and body apart: with
/// Nagle's algorithm on, the body waits for the client's delayed ACK, about
/// 40 ms per request on a kept-alive connection. Its end of the connection
/// must say TCP_NODELAY.
#[test]
fn python_example_sends_without_waiting_for_acks() {
    let mut command = testkit::python_example("http_server.py");
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    let server = Server::launch(command);
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    // Answered: the server's thread holds its end and has set it up.
    testkit::request(&mut stream, &mut reader, false).expect("an answer");
    let ours = stream.local_addr().expect("our address");
    let theirs = (connections_of(server.pid).into_iter())
        .find(|c| c.peer_addr().is_ok_and(|a| a == ours))
        .expect("the server's end of our connection");
    assert!(theirs.nodelay().expect("TCP_NODELAY"));
    server.stop();
}

/// Copies of the sockets process `pid` holds (pidfd_getfd), as TCP streams:
/// those that are not connected TCP sockets answer no peer address.
fn connections_of(pid: i32) -> Vec<TcpStream> {
    let pidfd = testkit::pidfd(pid).expect("pidfd");
    (testkit::sockets_of(pid).into_iter())
        .filter_map(|(fd, _)| {
            // SAFETY: pidfd_getfd takes a pidfd, an fd number in that process
            // and flags, and returns a new fd of ours or -1.
            let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
            // SAFETY: a new fd that only we hold.
            (copy >= 0).then(|| TcpStream::from(unsafe { OwnedFd::from_raw_fd(copy as i32) }))
        })
        .collect()
}
