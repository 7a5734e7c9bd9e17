//! Restarts while older generations still drain: two deploys a second apart,
//! a client that holds a connection for minutes. A restart is never refused
//! for that alone (up to the cap, see `GR_MAX_DRAINING` in `src/limits.rs`);
//! every restart makes a new generation, nothing fails, and every old
//! generation still finishes what it accepted and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use testkit::{Load, Server, TempDir};

const RESTARTS: usize = 10;

/// Restarts `command` every 0.2 s under load, without waiting for the old
/// generation to exit; then waits for all of them.
fn restarts_a_fifth_of_a_second_apart(command: Command) {
    testkit::become_subreaper();
    let mut server = Server::launch(command);
    let load = Load::start(server.addr, 4, 4);
    let mut leaving = Vec::new();
    for _ in 0..RESTARTS {
        // hand_over asserts the generation went up by one: no restart refused.
        leaving.push(server.hand_over(libc::SIGUSR2));
        thread::sleep(Duration::from_millis(200)); // the pace of the deploys, not a wait
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    for generation in &leaving {
        server.wait_gone(generation, Duration::from_secs(40));
    }
    assert_eq!(server.generation, 1 + RESTARTS as u64);
    server.stop();
}

fn quiet(mut command: Command) -> Command {
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    command
}

#[test]
fn the_c_example_restarts_while_older_generations_drain() {
    let dir = TempDir::new("drain-c");
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    restarts_a_fifth_of_a_second_apart(quiet(Command::new(&binary)));
}

#[test]
fn the_prefork_example_restarts_while_older_generations_drain() {
    let dir = TempDir::new("drain-prefork");
    let binary = dir.join("prefork_server");
    testkit::build_prefork_example(&binary, 1);
    restarts_a_fifth_of_a_second_apart(quiet(Command::new(&binary)));
}

#[test]
fn the_aiohttp_example_restarts_while_older_generations_drain() {
    restarts_a_fifth_of_a_second_apart(quiet(testkit::python_example("aiohttp_server.py")));
}

#[test]
fn the_uvicorn_example_restarts_while_older_generations_drain() {
    restarts_a_fifth_of_a_second_apart(quiet(testkit::python_example("uvicorn_server.py")));
}

/// A client holds a half-sent request on generation 1 while five restarts
/// a second apart each make a new generation; its request, completed then,
/// is answered by generation 1, which exits after it.
#[test]
fn a_half_sent_request_on_the_first_generation_holds_up_no_restart() {
    let dir = TempDir::new("drain-half");
    let binary = dir.join("http_server");
    testkit::build_c_example(&binary, 1);
    testkit::become_subreaper();
    let mut server = Server::launch(quiet(Command::new(&binary)));
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    // Answered requests on other connections show generation 1 holds it.
    assert_eq!(server.probe(Duration::from_secs(5)).unwrap().generation, 1);
    let first = server.hand_over(libc::SIGUSR2);
    let mut later = Vec::new();
    for _ in 1..5 {
        thread::sleep(Duration::from_secs(1)); // the pace of the deploys
        later.push(server.hand_over(libc::SIGUSR2));
    }
    assert_eq!(server.generation, 6, "five restarts, five new generations");
    slow.write_all(b"\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(slow);
    let mut generation = None;
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 2 {
        if let Some(value) = line.strip_prefix("X-Generation: ") {
            generation = value.trim().parse::<u64>().ok();
        }
        line.clear();
    }
    assert_eq!(
        generation,
        Some(1),
        "generation 1 answers the request it accepted"
    );
    server.wait_gone(&first, Duration::from_secs(40));
    for generation in &later {
        server.wait_gone(generation, Duration::from_secs(40));
    }
    server.stop();
}

/// With three and more generations alive at once, the PID file always names
/// the one that serves, never a draining one, also once the oldest exits.
#[test]
fn the_pid_file_names_the_serving_generation_while_older_ones_drain() {
    let dir = TempDir::new("drain-pidfile");
    let binary = dir.join("flaky_server");
    let source = testkit::repo().join("tests/c/flaky_server.c");
    testkit::compile("cc", &[&source], &binary, &["-std=c99", "-pthread"]);
    let pid_file = dir.join("server.pid");
    testkit::become_subreaper();
    let mut command = Command::new(&binary);
    command
        .arg("127.0.0.1:0")
        .env("GR_TEST_PID_FILE", &pid_file)
        .env("GRESTART_LOG", "warn");
    let mut server = Server::launch(command);
    let named = || -> i32 {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // A client that sends nothing holds the first generation's loop, once
    // accepted (not left in the accept queue for the heir to take).
    let holder = TcpStream::connect(server.addr).unwrap();
    assert!(testkit::wait_held_by(
        server.pid,
        &holder,
        Duration::from_secs(5)
    ));
    let mut leaving = Vec::new();
    for _ in 0..3 {
        leaving.push(server.hand_over(libc::SIGUSR2));
        assert_eq!(named(), server.pid, "generation {}", server.generation);
    }
    drop(holder);
    for generation in &leaving {
        server.wait_gone(generation, Duration::from_secs(40));
    }
    assert_eq!(named(), server.pid, "after the older generations exited");
    server.stop();
}
