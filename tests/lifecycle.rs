//! Lifecycle rules that need a fresh process each: the shutdown hooks run
//! once and to completion whoever asks (a second thread, the drain deadline,
//! a hook itself), a logger may call back into grestart, a failed start loses
//! nothing it inherited and leaves no thread behind, shutdown waits for the
//! work in flight, grestart's threads take no signal of the application's,
//! the restart and stop signals may change from two threads at once, and a
//! drain deadline of zero means "none" in Rust as in C. Driven through
//! tests/c/lifecycle.c, and through this very binary run again as a child for
//! the Rust API.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Builds tests/c/lifecycle.c and runs `scenario`; returns the scratch file's
/// lines after checking the program passed: exit status 0, no failed
/// expectation, and (unless the drain deadline ends it first) its summary.
fn run_scenario(scenario: &str) -> Vec<String> {
    let dir = testkit::TempDir::new(&format!("lifecycle-{scenario}"));
    let binary = dir.join("lifecycle");
    let source = testkit::repo().join("tests/c/lifecycle.c");
    testkit::compile("cc", &[&source], &binary, &["-std=c99", "-pthread"]);
    let scratch = dir.join("scratch");
    let out = Command::new(&binary)
        .arg(scenario)
        .arg(&scratch)
        .env("GRESTART_LOG", "info")
        .output()
        .expect("run lifecycle");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{scenario}: {}\n{stdout}{stderr}",
        out.status
    );
    assert!(!stderr.contains(": expected "), "{scenario}: {stderr}");
    let ended_by_deadline = stderr.contains("drain deadline of");
    assert!(
        ended_by_deadline || stdout.contains(" 0 failed"),
        "{scenario}: {stdout}{stderr}"
    );
    std::fs::read_to_string(&scratch)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn the_drain_deadline_waits_for_hooks_that_are_running() {
    assert_eq!(run_scenario("hooks-deadline"), ["hook done"]);
}

#[test]
fn a_second_shutdown_caller_waits_for_the_hooks() {
    assert_eq!(run_scenario("hooks-second-caller"), ["hook done"]);
}

#[test]
fn a_logger_may_call_back_into_grestart() {
    run_scenario("log-reentry");
}

#[test]
fn a_failed_start_keeps_the_inherited_fds() {
    run_scenario("engine-start-fails");
}

#[test]
fn a_forked_worker_cannot_act_for_its_master_and_drains_with_it() {
    run_scenario("forked-worker");
}

#[test]
fn shutdown_waits_for_the_work_in_flight() {
    assert_eq!(run_scenario("work-in-flight"), ["work done"]);
}

#[test]
fn grestart_threads_block_every_signal_but_their_own() {
    run_scenario("thread-masks");
}

#[test]
fn a_start_out_of_fds_leaves_no_thread_behind() {
    run_scenario("start-out-of-fds");
}

#[test]
fn a_child_forked_after_a_failed_start_reads_a_signal_pipe_of_its_own() {
    run_scenario("fork-after-failed-start");
}

#[test]
fn the_restart_and_stop_signals_may_change_at_once() {
    run_scenario("signals-together");
}

#[test]
fn the_restart_signal_changed_during_a_restart_stays_caught_until_it_is_over() {
    run_scenario("signal-changed-in-restart");
}

#[test]
fn the_stop_signal_let_go_during_a_restart_stops_until_it_is_over() {
    run_scenario("stop-changed-in-restart");
}

#[test]
fn a_restart_signal_before_the_start_is_counted_and_not_passed_on() {
    run_scenario("signal-before-start");
}

#[test]
fn a_successor_passes_on_no_ignored_restart_signal_before_its_start() {
    run_scenario("signal-before-start-as-heir");
}

#[test]
fn one_signal_cannot_both_restart_and_stop() {
    run_scenario("one-signal-one-role");
}

#[test]
fn a_log_callback_replaced_is_no_longer_running() {
    run_scenario("log-swap");
}

#[test]
fn grestart_may_be_called_from_a_thread_local_destructor() {
    run_scenario("tls-destructor");
}

#[test]
fn a_hook_may_call_shutdown() {
    assert_eq!(run_scenario("hook-calls-shutdown"), ["hook done"]);
}

/// The child half of [`a_zero_drain_deadline_is_none_in_rust`]: only does
/// anything when that test runs this binary again with `GR_LIFECYCLE_CHILD`.
#[test]
fn zero_deadline_child() {
    if std::env::var_os("GR_LIFECYCLE_CHILD").is_none() {
        return;
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    grestart::set_log_level(Some(grestart::Level::Info));
    grestart::set_logger(Some(move |_, line: &str| {
        sink.lock().unwrap().push(line.to_string())
    }));
    grestart::set_drain_deadline(Some(Duration::ZERO)).unwrap();
    grestart::ready().unwrap();
    grestart::shutdown().unwrap();
    let lines = lines.lock().unwrap();
    println!("child log: {lines:?}");
    assert!(
        lines.iter().any(|l| l == "draining (no deadline)"),
        "{lines:?}"
    );
}

#[test]
fn a_zero_drain_deadline_is_none_in_rust() {
    let stdout = run_child("zero_deadline_child");
    assert!(stdout.contains("child log:"), "the child ran: {stdout}");
}

/// Runs `test` of this binary in a process of its own; returns its stdout
/// once it passed.
fn run_child(test: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env("GR_LIFECYCLE_CHILD", "1")
        .output()
        .expect("run this test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test}: {stdout}");
    stdout
}

/// The child half of [`the_accept_loop_backs_off_out_of_fds`]: out of fds
/// with a connection queued, the documented loop (go on after an error) must
/// wait between attempts, not spin.
#[test]
fn emfile_child() {
    use std::os::fd::OwnedFd;
    use std::time::Instant;

    if std::env::var_os("GR_LIFECYCLE_CHILD").is_none() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    grestart::ready().unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    // Use up every fd under a small limit, so that accept fails with EMFILE.
    let limit = libc::rlimit {
        rlim_cur: 64,
        rlim_max: 64,
    };
    // SAFETY: a valid rlimit; lowering our own limit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let stdin = std::io::stdin();
    let mut hoard: Vec<OwnedFd> = Vec::new();
    while let Ok(fd) = std::os::fd::AsFd::as_fd(&stdin).try_clone_to_owned() {
        hoard.push(fd);
    }
    let started = Instant::now();
    let mut failures = 0;
    for connection in grestart::incoming(&listener) {
        let err = connection.err().expect("no fd to accept into");
        assert_eq!(grestart::errno_of(&err), libc::EMFILE, "{err}");
        failures += 1;
        if started.elapsed() > Duration::from_millis(300) {
            break;
        }
    }
    println!("{failures} failed accepts in {:?}", started.elapsed());
    // 5 ms, doubled each time: about 6 in 300 ms; a spinning loop makes thousands.
    assert!(failures <= 10, "the accept loop spins: {failures}");
}

#[test]
fn the_accept_loop_backs_off_out_of_fds() {
    let stdout = run_child("emfile_child");
    assert!(stdout.contains("failed accepts"), "the child ran: {stdout}");
}

/// The child half of [`the_drain_deadline_keeps_buffered_output`]: work that
/// never ends, so the drain deadline ends the process, and a line in Rust's
/// stdout buffer (no newline yet) that `_exit` alone would lose.
#[test]
fn deadline_output_child() {
    if std::env::var_os("GR_LIFECYCLE_CHILD").is_none() {
        return;
    }
    grestart::set_drain_deadline(Some(Duration::from_millis(200))).unwrap();
    grestart::ready().unwrap();
    let _work = grestart::work().unwrap();
    print!("buffered without a newline");
    std::thread::spawn(grestart::shutdown);
    std::thread::sleep(Duration::from_secs(20)); // the deadline exits first
    println!("not reached");
}

#[test]
fn the_drain_deadline_keeps_buffered_output() {
    let stdout = run_child("deadline_output_child");
    assert!(stdout.contains("buffered without a newline"), "{stdout}");
    assert!(!stdout.contains("not reached"), "{stdout}");
}

#[test]
fn the_drain_deadline_leaves_work_after_shutdown_alone() {
    assert_eq!(
        run_scenario("after-shutdown"),
        ["hook done", "after shutdown"]
    );
}

#[test]
fn an_heir_finds_its_fds_close_on_exec_before_its_first_call() {
    run_scenario("cloexec-at-start");
}
