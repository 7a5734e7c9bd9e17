//! A real broker for the consumer services: `redis-server` (Debian's
//! `redis-server`) on a free port of 127.0.0.1, nothing saved to disk, and a
//! small client of its protocol (RESP), enough to produce, read and inspect
//! streams.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use crate::build::TempDir;
use crate::process::{free_port, kill, pidfd, reap, wait_exit};

/// A `redis-server` of this test's own, stopped by its pid when dropped.
pub struct Redis {
    child: Child,
    exit: OwnedFd,
    pub port: u16,
    _dir: TempDir,
}

impl Redis {
    /// Starts one in the foreground (not daemonized, not supervised), its
    /// working directory a fresh temporary one, and waits for its "Ready to
    /// accept connections" line, then for an answer to `PING`.
    pub fn start() -> Redis {
        let dir = TempDir::new("redis");
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--supervised", "no", "--dir"])
            .arg(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        let exit = pidfd(child.id() as i32).expect("pidfd of redis-server");
        let mut log = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut seen = String::new();
        while !seen.contains("Ready to accept connections") {
            let before = seen.len();
            let read = log.read_line(&mut seen);
            if !matches!(read, Ok(n) if n > 0) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server ended before it was ready:\n{}",
                    &seen[..before]
                );
            }
        }
        // Its log goes on: keep reading, or it would block on a full pipe.
        thread::spawn(move || io::copy(&mut log, &mut io::sink()));
        let redis = Redis {
            child,
            exit,
            port,
            _dir: dir,
        };
        assert_eq!(
            redis.connect().command(&["PING"]),
            Value::Text("PONG".into())
        );
        redis
    }

    /// Its address as a client library takes it.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connect(&self) -> Resp {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Resp(BufReader::new(stream))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        kill(pid, libc::SIGKILL);
        wait_exit(&self.exit, Duration::from_secs(5));
        reap(pid);
    }
}

/// A reply of Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Nil,
    Int(i64),
    /// A simple or bulk string.
    Text(String),
    Array(Vec<Value>),
    Error(String),
}

impl Value {
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(n) => *n,
            other => panic!("not an integer: {other:?}"),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Value::Text(text) => text,
            other => panic!("not a string: {other:?}"),
        }
    }

    /// The elements of an array; none for a nil (what a read that timed out
    /// answers).
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(items) => items,
            Value::Nil => &[],
            other => panic!("not an array: {other:?}"),
        }
    }
}

/// One connection speaking RESP2. Commands may be pipelined: [`Resp::send`]
/// several, then [`Resp::reply`] as many times.
pub struct Resp(BufReader<TcpStream>);

impl Resp {
    /// Sends `args` and returns the reply; panics on an error reply.
    pub fn command(&mut self, args: &[&str]) -> Value {
        self.send(args);
        match self.reply() {
            Value::Error(error) => panic!("redis answered {args:?} with {error}"),
            value => value,
        }
    }

    pub fn send(&mut self, args: &[&str]) {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        (self.0.get_mut().write_all(request.as_bytes())).expect("send to redis");
    }

    pub fn reply(&mut self) -> Value {
        let mut line = String::new();
        self.0.read_line(&mut line).expect("read from redis");
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1.min(line.len()));
        let number = || rest.parse::<i64>().expect("a number in the reply");
        match kind {
            "+" => Value::Text(rest.into()),
            "-" => Value::Error(rest.into()),
            ":" => Value::Int(number()),
            "$" if number() < 0 => Value::Nil,
            "$" => {
                let mut bulk = vec![0; number() as usize + 2]; // and its CRLF
                self.0.read_exact(&mut bulk).expect("read from redis");
                bulk.truncate(bulk.len() - 2);
                Value::Text(String::from_utf8(bulk).expect("UTF-8"))
            }
            "*" if number() < 0 => Value::Nil,
            "*" => Value::Array((0..number()).map(|_| self.reply()).collect()),
            _ => panic!("not a RESP reply: {line:?}"),
        }
    }
}
