//! Containers: the server as PID 1 of a PID namespace (what `docker run
//! IMAGE /srv/server` does), under tini and dumb-init, and under `grestart
//! run`. Each restarts 20 times under keep-alive and one-connection-per-request
//! load with nothing failing; the namespace survives every restart, no zombie
//! is left in it, and SIGTERM to PID 1 drains the serving generation, runs its
//! hooks and ends the namespace with status 0.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use testkit::{Container, Load, TempDir};

const RESTARTS: usize = 20;

/// How the container starts the server, and how many processes it holds once
/// every old generation is gone (the serving one, the stub or launcher that
/// PID 1 becomes or is, and an init in front).
#[derive(Clone, Copy, Debug)]
enum Init {
    /// The server is PID 1; after a restart PID 1 is its stub.
    None,
    Tini,
    /// dumb-init
    Dumb,
    Launcher,
}

impl Init {
    fn command(self) -> Vec<OsString> {
        match self {
            Init::None => vec![],
            Init::Tini => vec!["tini".into(), "--".into()],
            Init::Dumb => vec!["dumb-init".into()],
            Init::Launcher => vec![launcher().into(), "run".into(), "--".into()],
        }
    }

    /// Whether the first generation becomes a stub (nothing else stays for it).
    fn has_stub(self) -> bool {
        !matches!(self, Init::Launcher)
    }

    fn settled_processes(self) -> usize {
        match self {
            Init::None | Init::Launcher => 2,
            Init::Tini | Init::Dumb => 3,
        }
    }
}

fn launcher() -> &'static str {
    env!("CARGO_BIN_EXE_grestart")
}

/// Restarts `server ADDRESS` in a container started the way `init` says.
fn restarts_in_a_container(init: Init, server: &[OsString]) {
    let mut command = init.command();
    command.extend(server.iter().cloned());
    command.push("127.0.0.1:0".into());
    let args: Vec<&OsStr> = command.iter().map(OsString::as_os_str).collect();
    let mut container = Container::start(&args);
    let load = Load::start(container.addr, 4, 4);
    let mut latencies = Vec::new();
    for _ in 0..RESTARTS {
        latencies.push(container.restart());
        // The old generation drains and is gone (reaped) before the next
        // restart; PID 1 is still there, so is the service.
        container.settles_to(init.settled_processes(), init.has_stub());
    }
    let stats = load.finish();
    latencies.sort();
    println!(
        "{init:?}: {} requests answered, {} failed; restart median {:?}, max {:?}",
        stats.ok,
        stats.failed,
        latencies[RESTARTS / 2],
        latencies[RESTARTS - 1]
    );
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert!(stats.ok > 0, "the load got answers");
    assert_eq!(container.generation, 1 + RESTARTS as u64);

    let log = std::sync::Arc::clone(&container.log);
    let last = container.generation;
    let status = container.stop();
    assert!(
        status.success(),
        "the container ends with status 0: {status:?}"
    );
    // The serving generation ran its hooks on SIGTERM. Its last line may
    // still be on its way through the reader thread when the container ends.
    log.wait_for(
        &format!("generation {last} exiting after"),
        1,
        Duration::from_secs(5),
    );
}

/// The three example servers, each built once for every test of this binary.
fn c_example() -> Vec<OsString> {
    static BUILT: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, binary) = BUILT.get_or_init(|| {
        let dir = TempDir::new("containers-c");
        let binary = dir.join("http_server");
        testkit::build_c_example(&binary, 1);
        (dir, binary)
    });
    vec![binary.into()]
}

fn rust_example() -> Vec<OsString> {
    static BUILT: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    let (_, binary) = BUILT.get_or_init(|| {
        let dir = TempDir::new("containers-rust");
        let binary = dir.join("http_server");
        testkit::build_rust_example("http_server", &[], &binary, 1);
        (dir, binary)
    });
    vec![binary.into()]
}

fn python_example() -> Vec<OsString> {
    let command = testkit::python_example("http_server.py");
    let mut args = vec![command.get_program().to_owned()];
    args.extend(command.get_args().map(OsStr::to_owned));
    // The environment the kit sets travels through env(1), which execs the rest.
    let mut env: Vec<OsString> = vec!["env".into()];
    for (key, value) in command.get_envs() {
        let mut entry = key.to_owned();
        entry.push("=");
        entry.push(value.unwrap_or_default());
        env.push(entry);
    }
    env.extend(args);
    env
}

#[test]
fn c_example_as_pid_1() {
    restarts_in_a_container(Init::None, &c_example());
}

#[test]
fn c_example_under_tini() {
    restarts_in_a_container(Init::Tini, &c_example());
}

#[test]
fn c_example_under_dumb_init() {
    restarts_in_a_container(Init::Dumb, &c_example());
}

#[test]
fn c_example_under_the_launcher() {
    restarts_in_a_container(Init::Launcher, &c_example());
}

#[test]
fn rust_example_as_pid_1() {
    restarts_in_a_container(Init::None, &rust_example());
}

#[test]
fn rust_example_under_tini() {
    restarts_in_a_container(Init::Tini, &rust_example());
}

#[test]
fn rust_example_under_dumb_init() {
    restarts_in_a_container(Init::Dumb, &rust_example());
}

#[test]
fn rust_example_under_the_launcher() {
    restarts_in_a_container(Init::Launcher, &rust_example());
}

#[test]
fn python_example_as_pid_1() {
    restarts_in_a_container(Init::None, &python_example());
}

#[test]
fn python_example_under_tini() {
    restarts_in_a_container(Init::Tini, &python_example());
}

#[test]
fn python_example_under_dumb_init() {
    restarts_in_a_container(Init::Dumb, &python_example());
}

#[test]
fn python_example_under_the_launcher() {
    restarts_in_a_container(Init::Launcher, &python_example());
}

/// The README's Dockerfile, run as docker would run it: its ENTRYPOINT as
/// PID 1 of a PID namespace (the launcher and the C example built from the
/// source the Dockerfile compiles, on a free port of 127.0.0.1), restarted
/// by `docker kill -s USR2` (SIGUSR2 to PID 1) and stopped by `docker stop`
/// (its STOPSIGNAL to PID 1).
#[test]
fn the_dockerfile_runs_as_printed() {
    let dockerfile =
        std::fs::read_to_string(testkit::repo().join("examples/container/Dockerfile")).unwrap();
    let line = |instruction: &str| {
        (dockerfile.lines())
            .find_map(|l| l.strip_prefix(instruction))
            .unwrap_or_else(|| panic!("the Dockerfile has a {instruction}"))
            .trim()
            .to_string()
    };
    assert!(
        dockerfile.contains("cc -O2 -Iinclude examples/c/http_server.c"),
        "the image serves the C example"
    );
    assert_eq!(
        line("STOPSIGNAL "),
        "SIGTERM",
        "docker stop sends what the launcher forwards"
    );
    let entrypoint = line("ENTRYPOINT ");
    let words: Vec<String> = (entrypoint.trim_matches(['[', ']']).split(','))
        .map(|w| w.trim().trim_matches('"').to_string())
        .collect();
    assert_eq!(words[..4], ["grestart", "run", "--", "/srv/server"]);
    let mut command: Vec<OsString> = vec![launcher().into()];
    command.extend(words[1..3].iter().map(OsString::from));
    command.extend(c_example());
    command.push("127.0.0.1:0".into()); // the image's 0.0.0.0:8080, on loopback only
    let args: Vec<&OsStr> = command.iter().map(OsString::as_os_str).collect();
    let mut container = Container::start(&args);
    let load = Load::start(container.addr, 2, 2);
    for _ in 0..5 {
        container.restart();
        container.settles_to(2, false);
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    assert!(container.stop().success());
}
