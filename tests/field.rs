//! The way servers are really run: a symlink-flip deploy (started through an
//! absolute path, a relative one or a `PATH` lookup; the old release deleted
//! after the flip), an application that changes directory and argv before it
//! calls grestart, and a container's seccomp profile refusing `clone3`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{HungMount, Load, Server, TempDir};

/// `DIR/releases/v1/NAME` and `DIR/releases/v2/NAME`, built by `build` with
/// those versions, and `DIR/current -> releases/v1`.
fn releases(tag: &str, name: &str, build: impl Fn(&Path, u32)) -> TempDir {
    let dir = TempDir::new(tag);
    for version in [1, 2] {
        let release = dir.join(&format!("releases/v{version}"));
        std::fs::create_dir_all(&release).unwrap();
        build(&release.join(name), version);
    }
    symlink("releases/v1", dir.join("current")).unwrap();
    dir
}

/// Points `DIR/current` at `releases/v2` atomically, as `ln -sfn` + `mv -T` do.
fn flip_to_v2(dir: &TempDir) {
    let fresh = dir.join("current.new");
    symlink("releases/v2", &fresh).unwrap();
    std::fs::rename(&fresh, dir.join("current")).unwrap();
}

fn current(dir: &TempDir) -> PathBuf {
    dir.join("current")
}

/// Restarts once on v1, flips, restarts again (optionally after deleting the
/// old release): the successor must run v2. All under load, nothing failing.
fn deploy(dir: &TempDir, command: Command, delete_v1: bool) {
    testkit::become_subreaper();
    let mut server = Server::launch(command);
    let load = Load::start(server.addr, 2, 2);
    assert_eq!(
        server.restart(libc::SIGUSR2).version,
        "1",
        "before the flip"
    );
    flip_to_v2(dir);
    if delete_v1 {
        std::fs::remove_dir_all(dir.join("releases/v1")).unwrap();
    }
    assert_eq!(
        server.restart(libc::SIGUSR2).version,
        "2",
        "after the flip the successor runs the new release"
    );
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    server.stop();
}

fn c_example(path: &Path, version: u32) {
    testkit::build_c_example(path, version);
}

/// tests/c/flaky_server.c, which has more knobs than the example.
fn flaky_example(path: &Path, version: u32) {
    let source = testkit::repo().join("tests/c/flaky_server.c");
    let define = format!("-DAPP_VERSION=\"{version}\"");
    testkit::compile("cc", &[&source], path, &["-std=c99", "-pthread", &define]);
}

#[test]
fn a_symlink_flip_deploy_restarts_onto_the_new_release() {
    let dir = releases("deploy-absolute", "srv", c_example);
    let mut command = Command::new(current(&dir).join("srv"));
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    deploy(&dir, command, false);
}

#[test]
fn a_relative_argv0_and_a_deleted_old_release() {
    let dir = releases("deploy-relative", "srv", c_example);
    // As a shell in /…/current runs ./srv: PWD is the symlinked path, getcwd()
    // the release it points to (deleted after the flip).
    let mut command = Command::new("./srv");
    command
        .arg("127.0.0.1:0")
        .current_dir(current(&dir))
        .env("PWD", current(&dir))
        .env("GRESTART_LOG", "warn");
    deploy(&dir, command, true);
}

#[test]
fn a_bare_name_found_on_path() {
    let dir = releases("deploy-path", "srv", c_example);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search = current(&dir).into_os_string();
    search.push(":");
    search.push(path);
    let mut command = Command::new("srv");
    command
        .arg("127.0.0.1:0")
        .env("PATH", search)
        .env("GRESTART_LOG", "warn");
    deploy(&dir, command, false);
}

/// The origin is captured before `main`: an application that changes
/// directory and overwrites argv[0] before its first grestart call still
/// restarts through the path as invoked, in the directory it started in.
#[test]
fn an_application_that_chdirs_and_rewrites_argv_first() {
    let dir = releases("deploy-wander", "flaky", flaky_example);
    let mut command = Command::new("./flaky");
    command
        .arg("127.0.0.1:0")
        .current_dir(current(&dir))
        .env("PWD", current(&dir))
        .env("GR_TEST_WANDER", "1")
        .env("GRESTART_LOG", "warn");
    deploy(&dir, command, true);
}

/// The successor is spawned with `clone3(CLONE_VM|CLONE_VFORK)`, whose cost
/// does not grow with the server's memory. Some container runtimes' seccomp
/// profiles answer EPERM (not ENOSYS) to clone3: then `clone` with the same
/// flags; where that is refused too, fork. Each path restarts under load.
#[test]
fn every_spawn_method_restarts_under_load() {
    for (filter, method) in [
        (None, "clone3"),
        (Some("--eperm-clone3"), "clone"),
        (Some("--no-vfork"), "fork"),
    ] {
        let dir = TempDir::new(&format!("spawn-{method}"));
        let binary = dir.join("http_server");
        testkit::build_c_example(&binary, 1);
        testkit::become_subreaper();
        let mut server = match filter {
            None => Server::start(&binary, &[], "127.0.0.1:0", &[("GRESTART_LOG", "debug")]),
            Some(option) => {
                let wrapper = dir.join("seccomp_exec");
                let source = testkit::repo().join("tests/c/seccomp_exec.c");
                testkit::compile("cc", &[&source], &wrapper, &["-std=c99"]);
                let mut args = vec![binary.as_os_str()];
                if option == "--no-vfork" {
                    args.insert(0, std::ffi::OsStr::new(option));
                }
                Server::start(&wrapper, &args, "127.0.0.1:0", &[("GRESTART_LOG", "debug")])
            }
        };
        let load = Load::start(server.addr, 2, 2);
        let wait = std::time::Duration::from_secs(10);
        for _ in 0..3 {
            server.restart(libc::SIGUSR2);
            if filter.is_some() {
                let refusal = server.wait_for_log("clone3 refused", wait);
                assert!(refusal.contains("Operation not permitted"), "{refusal}");
            }
            let line = server.wait_for_log("spawned with", wait);
            assert!(line.ends_with(&format!("spawned with {method}")), "{line}");
        }
        let stats = load.finish();
        assert_eq!(stats.failed, 0, "{method}: {:?}", stats.failures);
        server.stop();
    }
}

/// `systemctl kill -s USR2` (or `pkill -USR2`) signals every process of the
/// service, a successor that is still starting included: the Python example
/// takes tens of milliseconds to import its modules. Signal it over and over
/// until its grestart has installed the handler; it must survive and serve.
#[test]
fn a_restart_signal_to_every_process_spares_a_starting_successor() {
    testkit::become_subreaper();
    let mut command = testkit::python_example("http_server.py");
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    let mut server = Server::launch(command);
    let old = server.pid;
    testkit::kill(old, libc::SIGUSR2);
    let started = std::time::Instant::now();
    let mut signalled_while_starting = std::collections::HashSet::new();
    let answer = loop {
        for pid in testkit::children(old, false) {
            if !testkit::catches(pid, libc::SIGUSR2) {
                testkit::kill(pid, libc::SIGUSR2);
                signalled_while_starting.insert(pid);
            }
        }
        let answer = server
            .probe(std::time::Duration::from_secs(5))
            .expect("the service answers");
        if answer.pid != old {
            break answer;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no successor took over"
        );
    };
    assert!(
        signalled_while_starting.contains(&answer.pid),
        "the successor was signalled while it started: {signalled_while_starting:?}"
    );
    assert_eq!(answer.generation, 2);
    let old_exit = testkit::pidfd(old).ok();
    if let Some(fd) = &old_exit {
        assert!(testkit::wait_exit(fd, std::time::Duration::from_secs(40)));
    }
    testkit::reap(old);
    server.pid = answer.pid;
    server.pids.push(answer.pid);
    let again = server
        .probe(std::time::Duration::from_secs(5))
        .expect("the successor serves on");
    assert_eq!((again.pid, again.generation), (answer.pid, 2));
    server.stop();
}

/// The child `parent` is starting, once there is one: its exec is stuck in
/// the hung mount, which shows nowhere but in /proc.
fn stuck_successor(parent: i32) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(&pid) = testkit::children(parent, false).first() {
            return pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no successor started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `DIR/current/NAME 127.0.0.1:0`, logging at info, with `env`.
fn launch_current(dir: &TempDir, name: &str, env: &[(&str, &str)]) -> Server {
    testkit::become_subreaper();
    let mut command = Command::new(current(dir).join(name));
    command
        .arg("127.0.0.1:0")
        .env("GRESTART_LOG", "info")
        .envs(env.iter().copied());
    Server::launch(command)
}

/// Flips `current` onto the hung mount and asks for a restart; returns the
/// successor whose exec is stuck there.
fn restart_onto_hung(dir: &TempDir, server: &Server) -> i32 {
    flip_to(dir, "hung");
    testkit::kill(server.pid, libc::SIGUSR2);
    stuck_successor(server.pid)
}

/// Points `DIR/current` at `target`, as a deploy does.
fn flip_to(dir: &TempDir, target: &str) {
    let fresh = dir.join("current.new");
    symlink(target, &fresh).unwrap();
    std::fs::rename(&fresh, dir.join("current")).unwrap();
}

/// A deploy flips `current` to a release on a network mount that hangs: the
/// successor's exec never ends. The ready timeout still bounds the restart
/// (the child is killed, the old release serves on, every setter and the
/// accept path stay free meanwhile), and the restart after the flip back
/// works.
#[test]
fn a_release_on_a_hung_mount_is_bounded_by_the_ready_timeout() {
    let dir = releases("deploy-hung", "flaky", flaky_example);
    let _hung = HungMount::new(&dir.join("hung"));
    let mut server = launch_current(&dir, "flaky", &[("GR_TEST_READY_TIMEOUT_MS", "1000")]);
    let load = Load::start(server.addr, 2, 2);

    flip_to(&dir, "hung");
    testkit::kill(server.pid, libc::SIGUSR2);
    let line = server.wait_for_log("restart failed, still serving", Duration::from_secs(20));
    assert!(
        line.contains("had not finished its exec") && line.contains("killed it"),
        "{line}"
    );
    let answer = server.probe(Duration::from_secs(5)).expect("v1 serves on");
    assert_eq!((answer.pid, answer.version.as_str()), (server.pid, "1"));
    assert!(testkit::zombie_children(server.pid).is_empty());

    flip_to(&dir, "releases/v2");
    assert_eq!(server.restart(libc::SIGUSR2).version, "2");
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    server.stop();
}

/// gr_shutdown() (an application's own stop) while the successor's exec
/// hangs on such a mount, with the default ready timeout of a minute: it
/// returns at once, and the stuck successor is killed and reaped, never left
/// to start serving later.
#[test]
fn a_shutdown_is_not_held_up_by_a_successor_whose_exec_hangs() {
    let dir = releases("deploy-hung-stop", "flaky", flaky_example);
    let _hung = HungMount::new(&dir.join("hung"));
    let server = launch_current(&dir, "flaky", &[]);
    let stuck = restart_onto_hung(&dir, &server);
    let exit = testkit::pidfd(stuck).unwrap();
    {
        use std::io::{Read, Write};
        let mut admin = std::net::TcpStream::connect(server.addr).unwrap();
        admin.write_all(b"GET /shutdown HTTP/1.1\r\n\r\n").unwrap();
        admin.read_to_end(&mut Vec::new()).unwrap();
    }
    let lines = server.wait_for_logs(
        &["told to stop while successor", "shutdown returned"],
        Duration::from_secs(10),
    );
    assert!(lines[1].ends_with("shutdown returned 0"), "{lines:?}");
    assert!(
        testkit::wait_exit(&exit, Duration::ZERO),
        "the stuck successor {stuck} was killed"
    );
    assert!(
        testkit::zombie_children(server.pid).is_empty(),
        "and reaped"
    );
    server.stop();
}

/// The operator's stop (SIGTERM, the example's stop signal: `docker stop`,
/// `systemctl stop`) while the successor's exec hangs on such a mount, with
/// the default ready timeout of a minute: the restart gives up at once, the
/// stuck successor is killed and reaped, and the server drains and exits 0,
/// well within `docker stop`'s 10 s.
#[test]
fn a_stop_signal_is_not_held_up_by_a_successor_whose_exec_hangs() {
    let dir = releases("deploy-hung-sigterm", "srv", c_example);
    let _hung = HungMount::new(&dir.join("hung"));
    let mut server = launch_current(&dir, "srv", &[]);
    let stuck = restart_onto_hung(&dir, &server);
    let stuck_exit = testkit::pidfd(stuck).unwrap();
    let exit = testkit::pidfd(server.pid).unwrap();
    testkit::kill(server.pid, libc::SIGTERM);
    assert!(
        testkit::wait_exit(&exit, Duration::from_secs(5)),
        "the server stopped while its successor's exec hung"
    );
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    server.wait_for_log("told to stop while successor", Duration::from_secs(5));
    assert!(
        testkit::wait_exit(&stuck_exit, Duration::ZERO),
        "the stuck successor {stuck} was killed"
    );
    server.pids.clear();
}
