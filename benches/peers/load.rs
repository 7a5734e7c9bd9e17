//! The load of the peers table: clients of one kind (keep-alive, or one
//! connection per request) hammering a peer, counting what came back. Unlike
//! the test suite's `testkit::Load`, a connection reset by the server
//! (ECONNRESET) is counted apart from every other failure: it is the failure
//! a reload is most often blamed for.

use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What the clients saw.
#[derive(Default)]
pub struct Counts {
    pub ok: u64,
    /// Requests whose connection the server reset (ECONNRESET).
    pub reset: u64,
    /// Every other failure: refused, closed before an answer, timed out, not a 200.
    pub failed: u64,
    /// The first few failures of each kind, for the report.
    pub examples: Vec<String>,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.ok += other.ok;
        self.reset += other.reset;
        self.failed += other.failed;
        for e in other.examples {
            if self.examples.len() < 6 && !self.examples.contains(&e) {
                self.examples.push(e);
            }
        }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Counts>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, keep_alive: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || client(addr, keep_alive, &stop))
            })
            .collect();
        Load { stop, clients }
    }

    pub fn finish(self) -> Counts {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Counts::default();
        for client in self.clients {
            total.add(client.join().expect("load client"));
        }
        total
    }
}

fn client(addr: SocketAddr, keep_alive: bool, stop: &AtomicBool) -> Counts {
    let mut counts = Counts::default();
    let mut connection: Option<(TcpStream, BufReader<TcpStream>)> = None;
    // Bounded: a client never outlives the benchmark's ten minutes.
    let deadline = Instant::now() + Duration::from_secs(900);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let result = if keep_alive {
            match connection.take().map_or_else(|| connect(addr), Ok) {
                Err(e) => Err(e),
                Ok((mut stream, mut reader)) => {
                    let r = testkit::request(&mut stream, &mut reader, false);
                    if matches!(&r, Ok(response) if !response.closes) {
                        connection = Some((stream, reader));
                    }
                    r
                }
            }
        } else {
            testkit::get(addr, true)
        };
        match result {
            Ok(_) => counts.ok += 1,
            Err(e) => {
                // testkit's client keeps the io::Error's text, "(os error N)".
                if e.contains(&format!("(os error {})", libc::ECONNRESET)) {
                    counts.reset += 1;
                } else {
                    counts.failed += 1;
                }
                if counts.examples.len() < 6 && !counts.examples.contains(&e) {
                    counts.examples.push(e);
                }
            }
        }
    }
    counts
}

fn connect(addr: SocketAddr) -> Result<(TcpStream, BufReader<TcpStream>), String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    Ok((stream, reader))
}
