//! A small HTTP/1.1 server that restarts gracefully on SIGUSR2 through grestart.
//!
//! ```text
//! cargo run --example http_server -- 127.0.0.1:8080
//! kill -USR2 <pid>    # restart onto the binary on disk; nothing is lost
//! ```
//!
//! Every GET is answered with 200 and the headers `X-Pid`, `X-Generation` and
//! `X-Version`. A thread per connection; the main thread accepts until
//! grestart's shutdown fd turns readable, then waits for the connections to
//! finish (each answers its next request with `Connection: close`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const VERSION: &str = match option_env!("APP_VERSION") {
    Some(v) => v,
    None => "1",
};
/// While draining, a keep-alive connection idle this long is closed.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Server {
    draining: AtomicBool,
    served: AtomicU64,
    open_connections: Mutex<usize>,
    all_closed: Condvar,
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
    let listener = grestart::listen_tcp(address)?;
    listener.set_nonblocking(true)?;
    let server = Arc::new(Server::default());
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
    println!(
        "http_server: pid {} generation {generation} version {VERSION} listening on {}",
        std::process::id(),
        listener.local_addr()?
    );
    grestart::ready()?;

    accept_until_shutdown(&listener, &server)?;
    // A successor serves now. Closing our copy of the listening socket leaves it
    // open in the successor, which accepts whatever is still queued.
    drop(listener);
    server.draining.store(true, Ordering::SeqCst);
    let open = server.open_connections.lock().unwrap();
    drop(server.all_closed.wait_while(open, |n| *n > 0).unwrap());
    grestart::shutdown()
}

fn accept_until_shutdown(listener: &TcpListener, server: &Arc<Server>) -> io::Result<()> {
    let shutdown = grestart::shutdown_fd()?;
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shutdown.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
        if fds[1].revents != 0 {
            return Ok(());
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    *server.open_connections.lock().unwrap() += 1;
                    let server = Arc::clone(server);
                    thread::spawn(move || {
                        let _ = serve_connection(stream, &server);
                        let mut open = server.open_connections.lock().unwrap();
                        *open -= 1;
                        server.all_closed.notify_all();
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => {
                    eprintln!("http_server: accept: {e}");
                    break;
                }
            }
        }
    }
}

fn serve_connection(stream: TcpStream, server: &Server) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // Wake up now and then to notice the drain while a keep-alive client is idle.
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut idle_since = Instant::now();
    loop {
        let request = match read_request(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()), // the client closed
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if server.draining.load(Ordering::SeqCst)
                    && idle_since.elapsed() > DRAIN_IDLE
                    && reader.buffer().is_empty()
                {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let close =
            request.client_closes || server.draining.load(Ordering::SeqCst) || !request.is_get;
        let body = if request.is_get {
            format!(
                "served by pid {} generation {}\n",
                std::process::id(),
                grestart::generation()?
            )
        } else {
            "only GET is served here\n".to_string()
        };
        let response = format!(
            "HTTP/1.1 {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Pid: {}\r\nX-Generation: {}\r\nX-Version: {VERSION}\r\nConnection: {}\r\n\r\n{body}",
            if request.is_get {
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
        idle_since = Instant::now();
    }
}

struct Request {
    is_get: bool,
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
        is_get: lower.starts_with("get "),
        client_closes: if http10 {
            connection != "keep-alive"
        } else {
            connection == "close"
        },
    }))
}
