//! The demo: restarts the C example server 10 times under continuous load
//! (keep-alive and one-connection-per-request clients), the sixth time onto a
//! rebuilt binary of another version, and reports what the clients saw.
//!
//! ```text
//! cargo run --release --example demo
//! ```

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use testkit::{Load, Server, TempDir};

const RESTARTS: usize = 10;

fn main() {
    let dir = TempDir::new("demo");
    let binary = dir.join("http_server");
    println!("building examples/c/http_server.c (version 1) against libgrestart.so ...");
    testkit::build_c_example(&binary, 1);
    testkit::become_subreaper();
    let mut server = Server::start(
        &binary,
        &[] as &[&OsStr],
        "127.0.0.1:0",
        &[("GRESTART_LOG", "warn")],
    );
    println!(
        "serving on {} as pid {}; starting 4 keep-alive and 4 connection-per-request clients",
        server.addr, server.pid
    );
    let load = Load::start(server.addr, 4, 4);
    let started = Instant::now();

    let mut rows = vec![(1u64, server.pid, "1".to_string(), None::<Duration>)];
    for i in 0..RESTARTS {
        // Let the clients work against each generation for a moment.
        std::thread::sleep(Duration::from_millis(300));
        if i == RESTARTS / 2 {
            println!("replacing the binary on disk with version 2 ...");
            testkit::build_c_example(&binary, 2);
        }
        let restart = server.restart(libc::SIGUSR2);
        rows.push((
            server.generation,
            restart.pid,
            restart.version,
            Some(restart.latency),
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.finish();
    let elapsed = started.elapsed();
    server.stop();

    println!();
    println!("generation    pid  version  restart latency  requests served");
    for (generation, pid, version, latency) in &rows {
        let latency = latency.map_or("(fresh start)".to_string(), |l| {
            format!("{:.2} ms", l.as_secs_f64() * 1e3)
        });
        let served = stats.by_pid.get(pid).copied().unwrap_or(0);
        println!("{generation:>10} {pid:>6} {version:>8} {latency:>16} {served:>16}");
    }
    println!();
    println!(
        "{RESTARTS} restarts in {:.1} s: {} requests served, {} failed",
        elapsed.as_secs_f64(),
        stats.ok,
        stats.failed
    );
    for failure in &stats.failures {
        println!("  failure: {failure}");
    }
    std::process::exit(if stats.failed == 0 { 0 } else { 1 });
}
