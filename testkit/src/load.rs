//! Load: concurrent clients, keep-alive and one connection per request,
//! that count every request that does not come back as a 200.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{get, request};

/// What the load saw.
#[derive(Default, Debug)]
pub struct LoadStats {
    pub ok: u64,
    pub failed: u64,
    /// Failed requests whose connection was refused (nothing listened).
    pub refused: u64,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
    /// Requests answered per pid.
    pub by_pid: HashMap<i32, u64>,
    /// Requests answered in each 10 ms since the load started.
    pub per_10ms: Vec<u64>,
    /// The slowest keep-alive request that started in each 10 ms.
    pub slowest_keep_alive_per_10ms: Vec<Duration>,
}

impl LoadStats {
    /// The slowest keep-alive request that started between `from` and `to`
    /// (offsets from the start of the load).
    pub fn slowest_keep_alive_between(&self, from: Duration, to: Duration) -> Duration {
        let bucket = |d: Duration| (d.as_millis() / 10) as usize;
        let end = (bucket(to) + 1).min(self.slowest_keep_alive_per_10ms.len());
        (self.slowest_keep_alive_per_10ms.get(bucket(from)..end))
            .and_then(|window| window.iter().max().copied())
            .unwrap_or_default()
    }
}

/// Concurrent HTTP clients hammering a server until stopped: some reuse their
/// connection (keep-alive), some open one per request. Every request that does
/// not come back as a 200 counts as failed: refused, reset, cut off.
pub struct Load {
    /// When the clients started; the origin of `LoadStats::per_10ms`.
    pub started: Instant,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, keep_alive_clients: usize, close_clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let started = Instant::now();
        let threads = (0..keep_alive_clients + close_clients)
            .map(|i| {
                let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
                let keep_alive = i < keep_alive_clients;
                thread::spawn(move || client(addr, keep_alive, started, &stop, &stats))
            })
            .collect();
        Load {
            started,
            stop,
            stats,
            threads,
        }
    }

    pub fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("load client thread");
        }
        Arc::try_unwrap(self.stats)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

fn client(
    addr: SocketAddr,
    keep_alive: bool,
    started: Instant,
    stop: &AtomicBool,
    stats: &Mutex<LoadStats>,
) {
    let mut connection: Option<(TcpStream, BufReader<TcpStream>)> = None;
    // Bounded: a client never runs for more than ten minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let sent = Instant::now();
        let result = if keep_alive {
            let mut connect_error = None;
            if connection.is_none() {
                match connect(addr) {
                    Ok(s) => {
                        let reader = BufReader::new(s.try_clone().expect("clone stream"));
                        connection = Some((s, reader));
                    }
                    Err(e) => connect_error = Some(format!("connect: {e}")),
                }
            }
            match connection.as_mut() {
                None => Err(connect_error.unwrap_or_default()),
                Some((stream, reader)) => {
                    let r = request(stream, reader, false);
                    // The server asked to close (it is draining), or it broke.
                    if !matches!(&r, Ok(resp) if !resp.closes) {
                        connection = None;
                    }
                    r
                }
            }
        } else {
            get(addr, true)
        };
        let took = sent.elapsed();
        let mut stats = stats.lock().unwrap();
        match result {
            Ok(response) => {
                stats.ok += 1;
                *stats.by_pid.entry(response.pid).or_default() += 1;
                if keep_alive {
                    let bucket = ((sent - started).as_millis() / 10) as usize;
                    let slowest = &mut stats.slowest_keep_alive_per_10ms;
                    if slowest.len() <= bucket {
                        slowest.resize(bucket + 1, Duration::ZERO);
                    }
                    slowest[bucket] = slowest[bucket].max(took);
                }
                let bucket = (started.elapsed().as_millis() / 10) as usize;
                if stats.per_10ms.len() <= bucket {
                    stats.per_10ms.resize(bucket + 1, 0);
                }
                stats.per_10ms[bucket] += 1;
            }
            Err(e) => {
                stats.failed += 1;
                if e.contains("refused") {
                    stats.refused += 1;
                }
                if stats.failures.len() < 10 {
                    stats.failures.push(e);
                }
            }
        }
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The spread of a set of timings.
pub struct Summary {
    pub min: Duration,
    pub median: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Summary {
        min: samples[0],
        median: at(0.5),
        p99: at(0.99),
        max: samples[samples.len() - 1],
    }
}
