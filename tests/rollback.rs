//! Probation, rollback and crash recovery under `grestart run`, as a deploy
//! meets them: a symlinked release directory (`current -> releases/vN`), the
//! launcher as PID 1 of a container, keep-alive and connection-per-request
//! load throughout, `grestart restart` waiting for the outcome.
//!
//! The server is tests/c/flaky_server.c in keep-alive mode, built once per
//! release; `GR_TEST_CRASH_VERSION` makes one release die 1 s after it is
//! ready, `GR_TEST_UNHEALTHY_VERSION` makes one answer `GET /health` with 503.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::symlink;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Container, Load, LoadStats, TempDir};

const KEEP_ALIVE_CLIENTS: usize = 4;
const CLOSE_CLIENTS: usize = 4;

/// `DIR/releases/v1..vN/server` built as those versions, `DIR/current ->
/// releases/v1`, and `DIR/mode` saying "keepalive".
fn releases(tag: &str, count: u32) -> TempDir {
    let dir = TempDir::new(tag);
    let source = testkit::repo().join("tests/c/flaky_server.c");
    for version in 1..=count {
        let release = dir.join(&format!("releases/v{version}"));
        std::fs::create_dir_all(&release).unwrap();
        let define = format!("-DAPP_VERSION=\"{version}\"");
        testkit::compile(
            "cc",
            &[&source],
            &release.join("server"),
            &["-std=c99", "-pthread", &define],
        );
    }
    symlink("releases/v1", dir.join("current")).unwrap();
    std::fs::write(dir.join("mode"), "keepalive\n").unwrap();
    dir
}

/// Points `DIR/current` at `releases/vN` atomically, as `ln -sfn` + `mv -T` do.
fn flip_to(dir: &TempDir, version: u32) {
    let fresh = dir.join("current.new");
    symlink(format!("releases/v{version}"), &fresh).unwrap();
    std::fs::rename(&fresh, dir.join("current")).unwrap();
}

/// `grestart run OPTIONS -- env ENV... DIR/current/server ADDRESS` as PID 1 of
/// a container.
fn service(dir: &TempDir, options: &[&str], env: &[(&str, &str)], address: &str) -> Container {
    let mut command: Vec<OsString> = vec![env!("CARGO_BIN_EXE_grestart").into(), "run".into()];
    command.extend(options.iter().map(OsString::from));
    command.extend(["--".into(), "env".into()]);
    let mut mode = OsString::from("GR_TEST_MODE_FILE=");
    mode.push(dir.join("mode"));
    command.push(mode);
    command.extend(env.iter().map(|(k, v)| OsString::from(format!("{k}={v}"))));
    command.push(dir.join("current/server").into());
    command.push(address.into());
    let args: Vec<&OsStr> = command.iter().map(OsString::as_os_str).collect();
    Container::start(&args)
}

/// `grestart restart --pid 1` inside the container, started now: it waits for
/// the outcome, probation included.
fn restart_command(container: &Container) -> Child {
    Command::new("nsenter")
        .args(["-t", &container.init.to_string(), "-p", "-m", "--"])
        .arg(env!("CARGO_BIN_EXE_grestart"))
        .args(["restart", "--pid", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsenter (util-linux) runs")
}

/// How a waiting `grestart restart` ended: its status and stderr.
fn outcome(restart: Child) -> (i32, String) {
    let out = restart.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls fresh connections until a release of `version` answers (bounded);
/// returns when, and its pid (in the container).
fn first_answer_of(container: &Container, version: &str, timeout: Duration) -> (Instant, i32) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = container.answer();
        if answer.version == version {
            return (Instant::now(), answer.pid);
        }
        assert!(
            Instant::now() < deadline,
            "no answer from version {version} within {timeout:?} (pid {} of version {} answers)",
            answer.pid,
            answer.version
        );
        std::thread::yield_now();
    }
}

/// SIGTERM, as `docker stop`: the generation the operator stops is not
/// restored, and the container ends (with its status: the test server has no
/// stop signal of its own, so SIGTERM kills it).
fn stop(service: Container) {
    let status = service.stop();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::into_raw(status) >> 8,
        128 + libc::SIGTERM,
        "{status:?}"
    );
}

/// The load's verdict across a generation's death: nothing refused (the
/// sockets stayed open), and no more failures than requests the dead
/// generation held (one per client at most), printed.
fn only_the_dead_generations_requests_failed(stats: &LoadStats) {
    println!(
        "{} requests answered, {} failed (held by the generation that died): {:?}",
        stats.ok, stats.failed, stats.failures
    );
    assert_eq!(
        stats.refused, 0,
        "connections refused: {:?}",
        stats.failures
    );
    assert!(
        stats.failed <= (KEEP_ALIVE_CLIENTS + CLOSE_CLIENTS) as u64,
        "more failures than requests in flight: {:?}",
        stats.failures
    );
}

/// v2 takes over, then crashes 1 s later, with v1's release deleted after the
/// flip: the launcher starts v1 again from the executable it kept, on the same
/// sockets, within 1 s; the waiting `grestart restart` hears "rolled back".
/// The probation is the one the server asked for.
/// A later restart tries the release `current` names (here v3) again.
#[test]
fn a_release_that_crashes_during_its_probation_is_rolled_back() {
    let dir = releases("rollback-crash", 3);
    // No probation of the launcher's own: the one the server asks for
    // (`gr_set_probation_ms`) is what catches the crash.
    let mut service = service(
        &dir,
        &["--probation", "0"],
        &[
            ("GR_TEST_CRASH_VERSION", "2"),
            ("GR_TEST_PROBATION_MS", "5000"),
        ],
        "127.0.0.1:0",
    );
    let load = Load::start(service.addr, KEEP_ALIVE_CLIENTS, CLOSE_CLIENTS);
    flip_to(&dir, 2);
    std::fs::remove_dir_all(dir.join("releases/v1")).unwrap();
    let restart = restart_command(&service);
    first_answer_of(&service, "2", Duration::from_secs(20));
    service
        .log
        .wait_for("version 2 crashing now", 1, Duration::from_secs(10));
    let crashed = Instant::now();
    let (restored, pid) = first_answer_of(&service, "1", Duration::from_secs(10));
    println!(
        "v1 answers again {} ms after v2 crashed",
        (restored - crashed).as_millis()
    );
    assert!(
        restored - crashed < Duration::from_secs(1),
        "restored within 1 s of the crash"
    );
    let (status, stderr) = outcome(restart);
    assert_eq!(status, 1, "the restart is reported failed: {stderr}");
    assert!(stderr.contains("rolled back"), "{stderr}");
    service
        .log
        .wait_for("rolled back", 1, Duration::from_secs(1));

    // Not retried by itself; the next restart tries what `current` names.
    flip_to(&dir, 3);
    service.pid = pid;
    service.generation = 0;
    service.restart();
    first_answer_of(&service, "3", Duration::from_secs(20));
    let stats = load.finish();
    only_the_dead_generations_requests_failed(&stats);
    stop(service);
}

/// v2 serves but fails the launcher's health check: it is killed and v1
/// restored, and the restart reported failed.
#[test]
fn a_release_that_fails_its_health_check_is_killed_and_rolled_back() {
    let dir = releases("rollback-health", 2);
    let port = testkit::free_port();
    let health = format!("http://127.0.0.1:{port}/health");
    let mut service = service(
        &dir,
        &["--probation", "5", "--health-check", &health],
        &[("GR_TEST_UNHEALTHY_VERSION", "2")],
        &format!("127.0.0.1:{port}"),
    );
    let load = Load::start(service.addr, KEEP_ALIVE_CLIENTS, CLOSE_CLIENTS);
    flip_to(&dir, 2);
    let restart = restart_command(&service);
    let (status, stderr) = outcome(restart);
    assert_eq!(status, 1, "the restart is reported failed: {stderr}");
    assert!(
        stderr.contains("rolled back") && stderr.contains("health check"),
        "{stderr}"
    );
    let (_, pid) = first_answer_of(&service, "1", Duration::from_secs(10));
    service
        .log
        .wait_for("is unhealthy", 1, Duration::from_secs(1));
    service.settles_to(2, false); // the launcher and v1: v2 was killed
    service.pid = pid;
    let stats = load.finish();
    only_the_dead_generations_requests_failed(&stats);
    stop(service);
}

/// v2 stays healthy through its probation: no rollback, the restart reported
/// done after the window, and v2 is the last good release. Killed later with
/// SIGKILL (a crash outside any restart), v2 is started again on the same
/// sockets within 1 s, with v2's release deleted meanwhile.
#[test]
fn a_release_past_its_probation_is_the_one_restored_after_a_crash() {
    let dir = releases("rollback-pass", 2);
    let service = service(&dir, &["--probation", "1"], &[], "127.0.0.1:0");
    let load = Load::start(service.addr, KEEP_ALIVE_CLIENTS, CLOSE_CLIENTS);
    flip_to(&dir, 2);
    let asked = Instant::now();
    let (status, stderr) = outcome(restart_command(&service));
    assert_eq!(status, 0, "{stderr}");
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "the outcome waits for the probation"
    );
    service
        .log
        .wait_for("passed its probation", 1, Duration::from_secs(1));
    let (_, v2) = first_answer_of(&service, "2", Duration::from_secs(10));
    service.settles_to(2, false);
    std::fs::remove_dir_all(dir.join("releases/v2")).unwrap();

    testkit::kill(service.host_pid(v2), libc::SIGKILL);
    let killed = Instant::now();
    let restored = loop {
        let answer = service.answer();
        if answer.pid != v2 {
            break answer;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "v2 answers after SIGKILL"
        );
    };
    let after = killed.elapsed();
    println!("restored {} ms after SIGKILL", after.as_millis());
    assert_eq!(restored.version, "2", "the last good release is v2");
    assert!(after < Duration::from_secs(1), "restored within 1 s");
    service
        .log
        .wait_for("was killed by signal 9", 1, Duration::from_secs(1));
    let stats = load.finish();
    only_the_dead_generations_requests_failed(&stats);
    stop(service);
}

/// `docker stop` (SIGTERM through the launcher) is no crash, though the test
/// server dies of it: nothing is restored and the container ends with the
/// serving generation's status.
#[test]
fn a_service_the_operator_stops_is_not_restored() {
    let dir = releases("rollback-stop", 1);
    let service = service(&dir, &[], &[], "127.0.0.1:0");
    service.answer();
    stop(service);
}
