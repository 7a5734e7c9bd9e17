//! The HTTP client of the tests: one request, and what the example servers
//! answer (see docs/architecture.md, "Example servers").

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What the example servers answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub pid: i32,
    /// `X-Worker-Pid`, from a prefork worker answering for its master (else 0).
    pub worker_pid: i32,
    pub generation: u64,
    pub version: String,
    pub closes: bool,
}

/// One GET over a new connection.
pub fn get(addr: SocketAddr, close: bool) -> Result<Response, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    request(&mut stream, &mut reader, close)
}

/// Sends one GET on `stream` and reads the whole response from `reader`.
pub fn request(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    close: bool,
) -> Result<Response, String> {
    let connection = if close { "close" } else { "keep-alive" };
    stream
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| format!("send: {e}"))?;
    read_response(reader)
}

/// Reads one whole response from `reader` (the request was sent some other way).
pub fn read_response(reader: &mut BufReader<TcpStream>) -> Result<Response, String> {
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Err("connection closed before a response".into()),
        Err(e) => return Err(format!("read: {e}")),
        Ok(_) => {}
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(format!("bad status line {status_line:?}"))?;
    let mut response = Response {
        status,
        pid: 0,
        worker_pid: 0,
        generation: 0,
        version: String::new(),
        closes: false,
    };
    let mut length = 0u64;
    loop {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read header: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "x-pid" => response.pid = value.parse().unwrap_or(0),
            "x-worker-pid" => response.worker_pid = value.parse().unwrap_or(0),
            "x-generation" => response.generation = value.parse().unwrap_or(0),
            "x-version" => response.version = value.to_string(),
            "content-length" => length = value.parse().unwrap_or(0),
            "connection" => response.closes = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    io::copy(&mut reader.by_ref().take(length), &mut io::sink())
        .map_err(|e| format!("read body: {e}"))?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    Ok(response)
}
