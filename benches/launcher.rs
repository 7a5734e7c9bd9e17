//! `cargo bench --bench launcher`: what a container's stable process costs a
//! restart. The C example, idle, restarted 60 times in each of three ways,
//! interleaved in rounds of 10 so that a busy moment of the host hits all
//! three alike: a plain process (the floor of these), PID 1 of a PID
//! namespace (its first generation becomes the stub), and under `grestart run`
//! in a PID namespace (the signal goes to the launcher, which forwards it).
//! Latency is from the signal to the first answer from the new generation.
//! Then the recovery from a crash: the serving generation under `grestart
//! run` killed with SIGKILL, 20 times, and the time until the release the
//! launcher restores on the same sockets answers.
//! Writes `target/bench/launcher-table.txt`.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use testkit::{Container, Server, TempDir};

const ROUNDS: usize = 6;
const PER_ROUND: usize = 10;
const RESTORES: usize = 20;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` builds and runs this too: building is the check.
        println!("launcher benchmark: run it with `cargo bench --bench launcher`");
        return;
    }
    testkit::become_subreaper();
    let dir = TempDir::new("bench-launcher");
    let server = dir.join("http_server");
    testkit::build_c_example(&server, 1);
    let quiet = [("GRESTART_LOG", "warn")];

    let mut plain = Vec::new();
    let mut pid_1 = Vec::new();
    let mut launched = Vec::new();
    for _ in 0..ROUNDS {
        let mut alone = Server::start(&server, &[] as &[&OsStr], "127.0.0.1:0", &quiet);
        for _ in 0..PER_ROUND {
            plain.push(alone.restart(libc::SIGUSR2).latency);
        }
        alone.stop();
        pid_1.extend(container_restarts(&[server.as_os_str()], true));
        let launcher = OsString::from(env!("CARGO_BIN_EXE_grestart"));
        launched.extend(container_restarts(
            &[
                &launcher,
                OsStr::new("run"),
                OsStr::new("--"),
                server.as_os_str(),
            ],
            false,
        ));
    }

    let plain = testkit::summarize(plain);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{:<34} {:>10} {:>10} {:>12}",
        "C example, idle", "median", "max", "vs plain"
    );
    let floor = plain.median;
    for (name, summary) in [
        ("plain process", plain),
        ("PID 1 of a namespace (the stub)", testkit::summarize(pid_1)),
        ("under grestart run", testkit::summarize(launched)),
    ] {
        let _ = writeln!(
            table,
            "{name:<34} {:>10.2?} {:>10.2?} {:>+11.3}ms",
            summary.median,
            summary.max,
            (summary.median.as_secs_f64() - floor.as_secs_f64()) * 1e3
        );
    }
    let _ = writeln!(
        table,
        "{} restarts each, interleaved in {ROUNDS} rounds; signal to the new generation's first answer",
        ROUNDS * PER_ROUND
    );
    let restores = testkit::summarize(restores(&server));
    let _ = writeln!(
        table,
        "\n{:<34} {:>10.2?} {:>10.2?}\n{RESTORES} SIGKILLs of the serving generation under grestart run; \
         the kill to the first answer of the release it restored",
        "crash to restored (same sockets)", restores.median, restores.max
    );
    print!("{table}");
    let out = testkit::repo().join("target/bench");
    std::fs::create_dir_all(&out).expect("target/bench");
    std::fs::write(out.join("launcher-table.txt"), table).expect("write the table");
}

/// `RESTORES` times: SIGKILL to the serving generation under `grestart run`,
/// and how long until the release the launcher starts in its place answers.
fn restores(server: &std::path::Path) -> Vec<Duration> {
    let launcher = OsString::from(env!("CARGO_BIN_EXE_grestart"));
    let args: [&OsStr; 6] = [
        &launcher,
        OsStr::new("run"),
        OsStr::new("--probation=0"),
        OsStr::new("--"),
        server.as_os_str(),
        OsStr::new("127.0.0.1:0"),
    ];
    let mut container = Container::start(&args);
    let latencies = (0..RESTORES)
        .map(|_| {
            let killed = Instant::now();
            testkit::kill(container.host_pid(container.pid), libc::SIGKILL);
            let answer = loop {
                let answer = container.answer();
                if answer.pid != container.pid {
                    break answer;
                }
            };
            let latency = killed.elapsed();
            container.pid = answer.pid;
            // The launcher restores at most once a second (a release that
            // dies again that soon is left dead): wait that out.
            std::thread::sleep(Duration::from_millis(1100));
            latency
        })
        .collect();
    container.stop();
    latencies
}

/// `PER_ROUND` restarts of `command ADDRESS` as PID 1 of a PID namespace.
fn container_restarts(command: &[&OsStr], stub: bool) -> Vec<Duration> {
    let mut args = command.to_vec();
    args.push(OsStr::new("127.0.0.1:0"));
    let mut container = Container::start(&args);
    let processes = 2; // the stub or the launcher, and the serving generation
    let latencies = (0..PER_ROUND)
        .map(|_| {
            let latency = container.restart();
            container.settles_to(processes, stub);
            latency
        })
        .collect();
    assert!(container.stop().success());
    latencies
}
