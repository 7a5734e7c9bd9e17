//! The unit files of `examples/systemd/` (printed whole in the README) run by
//! a real systemd, booted as PID 1 of a container on our network
//! (`testkit::Systemd`): reloads under load, `MainPID` following the
//! generations, stops, socket units, and what a failed restart reports.
//!
//! How a printed unit maps to the installed one: the path
//! `/srv/app/current/server` is kept (the C example is installed there in the
//! container's root), and only the address changes, `0.0.0.0:8080` (and
//! `ListenStream=8080`) becoming a port of ours on 127.0.0.1, and the
//! launcher `/usr/local/bin/grestart` (the container binds the host's `/usr`)
//! being the one this test was built with, at [`LAUNCHER`] (see
//! [`install_unit`]).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use testkit::{Load, Systemd};

const SERVER: &str = "/srv/app/current/server";
const LAUNCHER: &str = "/srv/bin/grestart";

/// A container with the C example at [`SERVER`] and the library it links
/// (bound at its own path, which the example's rpath names).
fn boot() -> Systemd {
    let systemd = Systemd::boot(&[&testkit::lib_dir()]);
    let server = systemd.root().join(SERVER.trim_start_matches('/'));
    std::fs::create_dir_all(server.parent().unwrap()).unwrap();
    testkit::build_c_example(&server, 1);
    let launcher = systemd.root().join(LAUNCHER.trim_start_matches('/'));
    std::fs::create_dir_all(launcher.parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_grestart"), launcher).unwrap();
    systemd
}

/// Installs `examples/systemd/NAME` as `/etc/systemd/system/NAME` with each
/// `(printed, installed)` replacement made, and checks that every one matched.
fn install_unit(systemd: &Systemd, name: &str, replacements: &[(&str, &str)]) {
    let path = testkit::repo().join("examples/systemd").join(name);
    let mut text = std::fs::read_to_string(path).unwrap();
    for (printed, installed) in replacements {
        assert!(text.contains(printed), "{name} has no {printed:?}");
        text = text.replace(printed, installed);
    }
    text = text.replace("/usr/local/bin/grestart", LAUNCHER);
    systemd.install(&format!("/etc/systemd/system/{name}"), &text);
}

/// Starts `app.service` listening on a port the kernel picks, and reads that
/// port from the line the server prints first (through journald).
fn start_app(systemd: &Systemd) -> SocketAddr {
    install_unit(systemd, "app.service", &[("0.0.0.0:8080", "127.0.0.1:0")]);
    systemd.run(&["systemctl", "daemon-reload"]);
    systemd.run(&["systemctl", "start", "app.service"]);
    let line = systemd.wait_for_journal("app.service", "listening on", Duration::from_secs(20));
    line.rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// One answer on a fresh connection, retried for a few seconds.
fn answer(addr: SocketAddr) -> testkit::Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match testkit::get(addr, true) {
            Ok(response) => return response,
            Err(e) => assert!(Instant::now() < deadline, "{addr} does not answer: {e}"),
        }
        std::thread::yield_now();
    }
}

/// `systemctl reload UNIT`, then waits until systemd names a new main pid and
/// a fresh connection is answered by it: returns it. Inside the container
/// pids are the container's, and `X-Pid` and `MainPID` are both such pids.
fn reload(systemd: &Systemd, unit: &str, addr: SocketAddr, generation: u64) -> i32 {
    let before = systemd.main_pid(unit);
    systemd.run(&["systemctl", "reload", unit]);
    // `reload` returns with the restart's outcome (`grestart restart`), but
    // nothing here tells us when systemd took the heir's MAINPID=: polled,
    // bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let main = systemd.main_pid(unit);
        if main != before && main != 0 {
            let response = answer(addr);
            if response.pid == main {
                assert_eq!(
                    response.generation,
                    generation + 1,
                    "one restart per reload"
                );
                assert_eq!(systemd.show(unit, "ActiveState"), "active");
                return main;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{unit}: MainPID {main} (was {before}) after a reload; the service answers \
             from {}:\n{}",
            answer(addr).pid,
            systemd.journal(unit)
        );
        std::thread::sleep(Duration::from_millis(20)); // see above
    }
}

/// `SigIgn` of `pid` (a pid of the container) but the C library's own
/// signals 32 and 33, which systemd starts services with ignored and which
/// grestart leaves to the C library (it sets them up when it needs them).
fn ignored_signals(systemd: &Systemd, pid: i32) -> u64 {
    let status = systemd.run(&["cat", &format!("/proc/{pid}/status")]);
    let mask = (status.lines())
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .expect("a SigIgn line")
        .trim();
    u64::from_str_radix(mask, 16).expect("a hexadecimal mask") & !(3 << 31)
}

/// Reloads `unit` `count` times under keep-alive and one-connection-per-request
/// load; every request must succeed and MainPID follow each generation.
fn reloads_under_load(systemd: &Systemd, unit: &str, addr: SocketAddr, count: usize) {
    let first = answer(addr).generation;
    let load = Load::start(addr, 2, 2);
    for generation in first..first + count as u64 {
        reload(systemd, unit, addr, generation);
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{unit}: {:?}", stats.failures);
    assert!(
        stats.by_pid.len() > count,
        "{unit}: every generation served: {:?}",
        stats.by_pid
    );
}

/// `systemctl stop` drains the serving generation (its shutdown hook runs)
/// and the unit ends cleanly.
fn stop(systemd: &Systemd, unit: &str, addr: SocketAddr) {
    let serving = answer(addr);
    assert_eq!(serving.pid, systemd.main_pid(unit));
    systemd.run(&["systemctl", "stop", unit]);
    let (state, result) = (
        systemd.show(unit, "ActiveState"),
        systemd.show(unit, "Result"),
    );
    assert!(
        state == "inactive" && result == "success",
        "{unit} stopped: {state}, {result}:\n{}",
        systemd.journal(unit)
    );
    let goodbye = format!(
        "pid {} generation {} exiting after",
        serving.pid, serving.generation
    );
    systemd.wait_for_journal(unit, &goodbye, Duration::from_secs(10));
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let systemd = boot();
    install_unit(&systemd, "app.service", &[]);
    install_unit(&systemd, "app.socket", &[]);
    install_unit(&systemd, "app-socket.service", &[]);
    for unit in ["app.service", "app.socket", "app-socket.service"] {
        let out = systemd.output(&[
            "systemd-analyze",
            "verify",
            &format!("/etc/systemd/system/{unit}"),
        ]);
        let said = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        // A setting systemd cannot parse is only a warning (it then runs the
        // unit without it, as with an inline comment after NotifyAccess=):
        // any output at all fails.
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }
}

#[test]
fn twenty_reloads_of_the_notify_unit_under_load() {
    let systemd = boot();
    let addr = start_app(&systemd);
    assert_eq!(answer(addr).pid, systemd.main_pid("app.service"));
    reloads_under_load(&systemd, "app.service", addr, 20);
    stop(&systemd, "app.service", addr);
}

/// systemd starts services with SIGPIPE ignored (`IgnoreSIGPIPE=yes`); a
/// server relying on that must not lose it at its first restart.
#[test]
fn heirs_keep_the_dispositions_systemd_started_the_first_with() {
    let systemd = boot();
    let addr = start_app(&systemd);
    let first = ignored_signals(&systemd, systemd.main_pid("app.service"));
    assert_ne!(
        first & 1 << (libc::SIGPIPE - 1),
        0,
        "systemd ignores SIGPIPE"
    );
    let generation = answer(addr).generation;
    for generation in generation..generation + 5 {
        reload(&systemd, "app.service", addr, generation);
    }
    let serving = ignored_signals(&systemd, systemd.main_pid("app.service"));
    assert_eq!(
        serving, first,
        "SigIgn of the serving generation (after 5 reloads) vs the first"
    );
    stop(&systemd, "app.service", addr);
}

/// `systemctl reload` is how a deploy learns whether the new version runs: a
/// restart that fails (the binary is not executable; a new version that exits
/// before it is ready) must fail the reload, say why in `systemctl status`,
/// and the service serve on.
#[test]
fn a_failed_restart_fails_systemctl_reload() {
    let systemd = boot();
    let addr = start_app(&systemd);
    let serving = systemd.main_pid("app.service");
    let server = systemd.root().join(SERVER.trim_start_matches('/'));
    let failed_reload = |why: &str| {
        let reload = systemd.output(&["systemctl", "reload", "app.service"]);
        assert_eq!(answer(addr).pid, serving, "the service serves on");
        assert_eq!(systemd.main_pid("app.service"), serving);
        assert!(
            !reload.status.success(),
            "systemctl reload exited {} although the restart failed:\n{}",
            reload.status,
            systemd.journal("app.service")
        );
        let status = systemd.show("app.service", "StatusText");
        // What an operator sees (the README shows it).
        println!(
            "systemctl reload: {}StatusText: {status}",
            String::from_utf8_lossy(&reload.stderr)
        );
        assert!(
            status.contains("restart failed") && status.contains(why),
            "systemctl status shows the outcome: {status:?}"
        );
        assert_eq!(systemd.show("app.service", "ActiveState"), "active");
    };
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o644)).unwrap();
    failed_reload("Permission denied");
    // A new version that exits before it is ready (the running one keeps its
    // inode: the file is replaced, as a deploy does).
    let broken = server.with_extension("new");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &server).unwrap();
    failed_reload("exited with status 3 before it was ready");
}

/// `app.socket` (`ListenStream=`) and `app-socket.service`, with the
/// printed `ListenStream` and ExecStart address replaced by `listen` and
/// `address` on a free port.
fn socket_unit_reloads(listen: &str, address: &str) {
    let systemd = boot();
    let port = testkit::free_port().to_string();
    install_unit(
        &systemd,
        "app.socket",
        &[(
            "ListenStream=8080",
            &format!("ListenStream={}", listen.replace("PORT", &port)),
        )],
    );
    install_unit(
        &systemd,
        "app-socket.service",
        &[("0.0.0.0:8080", &address.replace("PORT", &port))],
    );
    systemd.run(&["systemctl", "daemon-reload"]);
    systemd.run(&["systemctl", "start", "app.socket"]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The first connection activates the service; it waits in the socket's
    // backlog meanwhile.
    assert_eq!(answer(addr).generation, 1);
    systemd.wait_for_journal(
        "app-socket.service",
        "socket-activated",
        Duration::from_secs(10),
    );
    reloads_under_load(&systemd, "app-socket.service", addr, 20);
    stop(&systemd, "app-socket.service", addr);
}

#[test]
fn a_port_only_socket_unit_reloads_under_load() {
    socket_unit_reloads("PORT", "0.0.0.0:PORT");
}

#[test]
fn an_address_specific_socket_unit_reloads_under_load() {
    socket_unit_reloads("127.0.0.1:PORT", "127.0.0.1:PORT");
}

/// `Restart=on-failure` with the fd store: the serving generation (an heir,
/// which systemd did not start) killed with SIGKILL under load. systemd starts
/// the service again with the listener grestart left in its store, so no
/// connection is refused, and it answers within 1 s; the only failed requests
/// are those the killed generation held.
#[test]
fn a_generation_killed_under_systemd_comes_back_on_the_same_socket() {
    let systemd = boot();
    let addr = start_app(&systemd);
    let heir = reload(&systemd, "app.service", addr, answer(addr).generation);
    let load = Load::start(addr, 2, 2);
    systemd.run(&["kill", "-KILL", &heir.to_string()]);
    let killed = Instant::now();
    let back = loop {
        let response = answer(addr);
        if response.pid != heir {
            break killed.elapsed();
        }
    };
    println!("answered again {} ms after SIGKILL", back.as_millis());
    let stats = load.finish();
    println!(
        "{} requests answered, {} failed (held by the killed generation): {:?}",
        stats.ok, stats.failed, stats.failures
    );
    assert_eq!(stats.refused, 0, "refused: {:?}", stats.failures);
    assert!(stats.failed <= 4, "{:?}", stats.failures);
    assert!(back < Duration::from_secs(1), "back within 1 s");
    assert_eq!(systemd.show("app.service", "NRestarts"), "1");
    stop(&systemd, "app.service", addr);
}
