//! A small HTTP/1.1 server that restarts gracefully on SIGUSR2 through grestart.
//!
//! ```text
//! cargo build --example http_server
//! target/debug/examples/http_server 127.0.0.1:8080
//! kill -USR2 <pid>    # restart onto the binary on disk; nothing is lost
//! ```
//!
//! Every GET and POST is answered with 200 and the headers `X-Pid`,
//! `X-Generation` and `X-Version`. A thread per connection; the main thread
//! accepts (and with it adopts the connections the previous generation hands
//! over) until a successor serves. Then each connection finishes
//! what its client sent and, idle, is handed to the successor: no connection
//! is closed by a restart. (Where the successor takes none, each answers its
//! next request with `Connection: close`.)

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const VERSION: &str = match option_env!("APP_VERSION") {
    Some(v) => v,
    None => "1",
};
/// The listener's name, which each handed-over connection carries.
const LISTENER: &str = "http";

struct Server {
    served: AtomicU64,
}

fn main() {
    let Some(address) = std::env::args().nth(1) else {
        eprintln!("usage: http_server HOST:PORT   (e.g. 127.0.0.1:8080)");
        std::process::exit(2);
    };
    if let Err(e) = run(&address) {
        eprintln!("http_server: {e}");
        std::process::exit(1);
    }
}

fn run(address: &str) -> io::Result<()> {
    // The previous generation's socket, or a new one on a fresh start.
    let listener = TcpListener::from(grestart::listen(
        &format!("tcp://{address}"),
        Some(LISTENER),
    )?);
    let server = Arc::new(Server {
        served: AtomicU64::new(0),
    });
    let generation = grestart::generation()?;
    let for_hook = Arc::clone(&server);
    grestart::on_shutdown(move || {
        let served = for_hook.served.load(Ordering::Relaxed);
        eprintln!(
            "http_server: pid {} generation {generation} exiting after {served} requests",
            std::process::id()
        );
    })?;
    grestart::set_drain_deadline(Some(Duration::from_secs(30)))?;
    // `docker stop`, `systemctl stop`, the launcher's SIGTERM: drain, run the hooks, exit 0.
    grestart::set_stop_signal(Some(libc::SIGTERM))?;
    // Before ready: the previous generation then hands us its idle connections,
    // which `incoming` yields with the accepted ones.
    grestart::adopt_fd()?;
    println!(
        "http_server: pid {} generation {generation} version {VERSION} listening on {}",
        std::process::id(),
        listener.local_addr()?
    );
    grestart::ready()?;

    // Until a successor serves; each connection counts as work in flight
    // until its thread drops it.
    for connection in grestart::incoming(&listener) {
        match connection {
            Ok(connection) => {
                let (stream, work) = connection.into_parts();
                spawn_connection(stream, work, &server);
            }
            Err(e) => eprintln!("http_server: accept: {e}"),
        }
    }
    // A successor serves now. Closing our copy of the listening socket leaves it
    // open in the successor, which accepts whatever is still queued.
    drop(listener);
    // Waits for every connection's Work (accepted and adopted alike), then runs the hooks.
    grestart::shutdown()
}

/// Which of `fds` are readable, waiting up to `timeout` (`None`: as long as
/// it takes) for one to be.
fn readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[bool; N]> {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let timeout = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    loop {
        // SAFETY: N valid pollfds.
        if unsafe { libc::poll(polled.as_mut_ptr(), N as libc::nfds_t, timeout) } >= 0 {
            return Ok(polled.map(|p| p.revents != 0));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Serves `stream` on a thread of its own; `work` counts it in flight until
/// the thread is done, so that `grestart::shutdown` waits for it.
fn spawn_connection(stream: TcpStream, work: grestart::Work, server: &Arc<Server>) {
    let server = Arc::clone(server);
    thread::spawn(move || {
        if let Err(e) = serve_connection(stream, &server) {
            eprintln!("http_server: {e}");
        }
        drop(work);
    });
}

fn serve_connection(stream: TcpStream, server: &Server) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        // Between requests: wait for the next one, or for the drain.
        let shutdown = grestart::shutdown_fd()?;
        if reader.buffer().is_empty() && readable([writer.as_fd(), shutdown], None)?[1] {
            if grestart::hand_over(&writer, Some(LISTENER))? == grestart::HandOver::Handed {
                return Ok(()); // dropping our copy closes nothing: the successor serves it
            }
            if !readable([writer.as_fd()], Some(grestart::limits::DEFAULT_IDLE_GRACE))?[0] {
                return Ok(()); // idle for the grace while draining: close it
            }
        }
        let Some(request) = read_request(&mut reader)? else {
            return Ok(()); // the client closed
        };
        let draining = grestart::wait_shutdown(Some(Duration::ZERO))?;
        let close = request.client_closes
            || (draining && !grestart::successor_adopts()?)
            || !request.served;
        let body = if request.served {
            format!(
                "served by pid {} generation {}\n",
                std::process::id(),
                grestart::generation()?
            )
        } else {
            "only GET and POST are served here\n".to_string()
        };
        let response = format!(
            "HTTP/1.1 {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Pid: {}\r\nX-Generation: {}\r\nX-Version: {VERSION}\r\nConnection: {}\r\n\r\n{body}",
            if request.served {
                "200 OK"
            } else {
                "405 Method Not Allowed"
            },
            body.len(),
            std::process::id(),
            grestart::generation()?,
            if close { "close" } else { "keep-alive" },
        );
        writer.write_all(response.as_bytes())?;
        server.served.fetch_add(1, Ordering::Relaxed);
        if close {
            return Ok(());
        }
    }
}

struct Request {
    /// GET or POST: answered with 200.
    served: bool,
    client_closes: bool,
}

/// Reads one request head (and skips its body). `None` when the client closed
/// the connection between requests.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head = String::new();
    loop {
        let before = head.len();
        match reader.read_line(&mut head) {
            Ok(0) if head.is_empty() => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if head[before..] == *"\r\n" || head[before..] == *"\n" => break,
            Ok(_) => {}
            // A timeout in the middle of a request keeps what was read so far.
            Err(e)
                if !head.is_empty()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
            Err(e) => return Err(e),
        }
    }
    let lower = head.to_ascii_lowercase();
    let http10 = lower
        .lines()
        .next()
        .is_some_and(|l| l.trim_end().ends_with("http/1.0"));
    let header = |name: &str| {
        lower
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let connection = header("connection:").unwrap_or("");
    let length: u64 = header("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    io::copy(&mut reader.by_ref().take(length), &mut io::sink())?;
    Ok(Some(Request {
        served: lower.starts_with("get ") || lower.starts_with("post "),
        client_closes: if http10 {
            connection != "keep-alive"
        } else {
            connection == "close"
        },
    }))
}
