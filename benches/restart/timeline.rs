//! What clients see across restarts, for the timeline picture: requests per
//! 10 ms under mixed load across 8 restarts, 250 ms apart, with grestart and
//! with a naive stop-and-start of a server without it (a gap, and failed
//! requests).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testkit::{Load, LoadStats, Server};

use crate::start;

/// What a load saw across the restarts, and when each restart began.
pub struct Timeline {
    pub stats: LoadStats,
    pub marks: Vec<Duration>,
}

/// The timelines with grestart and without it.
pub fn timelines(binary: &Path) -> (Timeline, Timeline) {
    let mut graceful = start(binary, "grestart", 0);
    let with = timeline(graceful.addr, || {
        graceful.restart(libc::SIGUSR2);
    });
    graceful.stop();

    let mut naive = Some(start(binary, "plain", 0));
    let addr = naive.as_ref().map(|s| s.addr).expect("started");
    let without = timeline(addr, || {
        // Stop it (SIGTERM, as a service manager would), then start it again.
        if let Some(old) = naive.take() {
            testkit::kill(old.pid, libc::SIGTERM);
            old.stop();
        }
        let args = [OsStr::new("serve"), OsStr::new("plain")];
        naive = Some(Server::start(binary, &args, &addr.to_string(), &[]));
    });
    if let Some(server) = naive {
        server.stop();
    }
    (with, without)
}

/// Load on `addr` across 8 calls of `restart`, 250 ms apart.
fn timeline(addr: SocketAddr, mut restart: impl FnMut()) -> Timeline {
    let load = Load::start(addr, 4, 4);
    let mut marks = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250)); // pacing for the picture
        marks.push(load.started.elapsed());
        restart();
    }
    std::thread::sleep(Duration::from_millis(250));
    Timeline {
        stats: load.finish(),
        marks,
    }
}
