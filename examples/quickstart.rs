//! grestart's Rust quick start: a blocking, thread-per-connection HTTP server
//! that restarts on SIGUSR2 without losing a request. README.md ("Quick
//! start") has the commands that build and run it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or("127.0.0.1:8080".into());
    let listener = grestart::listen_tcp(&address)?; // inherited, or bound now
    let (pid, bound) = (std::process::id(), listener.local_addr()?);
    println!("quickstart: pid {pid} listening on {bound}");
    grestart::ready()?; // the previous generation drains now

    // Until a successor serves; a connection counts as work in flight until dropped.
    for connection in grestart::incoming(&listener) {
        let mut connection = connection?;
        std::thread::spawn(move || answer(&mut connection));
    }
    grestart::shutdown() // waits for the connections in flight, then runs the hooks
}

/// Reads one request's head and answers it.
fn answer(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(&*stream);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear(); // up to the blank line
    }
    let (pid, generation) = (std::process::id(), grestart::generation()?);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\nX-Pid: {pid}\r\nX-Generation: {generation}\r\n\r\n"
    )
}
