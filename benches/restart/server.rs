//! The server the benchmark restarts, one binary for every mode: the same
//! tokio HTTP/1.1 server (keep-alive, 200 + `X-Pid` + `X-Generation`) that
//! differs only in how the listening socket is obtained and when the process
//! drains (see the top of `main.rs`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shellflip::lifecycle::{LifecycleHandler, PipeWriter, receive_from_old_process};
use shellflip::{RestartConfig, ShutdownCoordinator};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::signal::unix::SignalKind;

/// What the shellflip successor receives through the hand-over pipe.
struct ShellflipHandover {
    listener: RawFd,
    generation: u64,
}

#[async_trait]
impl LifecycleHandler for ShellflipHandover {
    async fn pre_new_process(&mut self) {
        set_cloexec(self.listener, false); // the child inherits it across exec
    }

    async fn send_to_new_process(&mut self, mut pipe: PipeWriter) -> io::Result<()> {
        pipe.write_u32(self.listener as u32).await?;
        pipe.write_u64(self.generation + 1).await
    }

    async fn new_process_failed(&mut self) {
        set_cloexec(self.listener, true);
    }
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on an fd this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
}

pub fn serve(mode: &str, address: &str, extra: usize) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut extra_listeners: Vec<OwnedFd> = Vec::new();
    let (listener, generation) = match mode {
        "plain" => (std::net::TcpListener::bind(address)?, 1),
        "grestart" => {
            if std::env::var_os("GRESTART_LOG").is_none() {
                grestart::set_log_level(Some(grestart::Level::Warn));
            }
            for i in 0..extra {
                let name = format!("extra{i}");
                extra_listeners.push(grestart::listen("tcp://127.0.0.1:0", Some(&name))?);
            }
            (grestart::listen_tcp(address)?, grestart::generation()?)
        }
        "shellflip" => match runtime.block_on(receive_shellflip_listener())? {
            Some(inherited) => inherited,
            None => (std::net::TcpListener::bind(address)?, 1),
        },
        _ => return Err(io::Error::other(format!("unknown mode {mode}"))),
    };
    listener.set_nonblocking(true)?;
    println!(
        "bench server: pid {} generation {generation} mode {mode} listening on {}",
        std::process::id(),
        listener.local_addr()?
    );
    runtime.block_on(run(mode, listener, generation))
}

async fn receive_shellflip_listener() -> io::Result<Option<(std::net::TcpListener, u64)>> {
    let Some(mut pipe) = receive_from_old_process() else {
        return Ok(None);
    };
    let fd = pipe.read_u32().await? as RawFd;
    let generation = pipe.read_u64().await?;
    set_cloexec(fd, true);
    // SAFETY: the previous generation passed us this open listening socket.
    Ok(Some((
        unsafe { std::net::TcpListener::from_raw_fd(fd) },
        generation,
    )))
}

/// Serves until it is time to drain, then waits for the open connections.
async fn run(mode: &str, listener: std::net::TcpListener, generation: u64) -> io::Result<()> {
    let fd = listener.as_raw_fd();
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let draining = Arc::new(AtomicBool::new(false));
    let coordinator = ShutdownCoordinator::new();
    let drain: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> = match mode {
        "grestart" => {
            grestart::ready()?;
            Box::pin(async {
                let _ = tokio::task::spawn_blocking(|| grestart::wait_shutdown(None)).await;
            })
        }
        "shellflip" => {
            let restart = RestartConfig {
                lifecycle_handler: Box::new(ShellflipHandover {
                    listener: fd,
                    generation,
                }),
                restart_signal: SignalKind::user_defined1(),
                exit_on_error: false,
                ..RestartConfig::default()
            }
            .try_into_restart_task()?;
            Box::pin(async move {
                let _ = restart.await; // first poll: ready; resolves once a successor started
            })
        }
        _ => Box::pin(std::future::pending()),
    };
    tokio::pin!(drain);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    let handle = coordinator.handle();
                    let draining = Arc::clone(&draining);
                    tokio::spawn(async move {
                        let _ = connection(stream, generation, &draining).await;
                        drop(handle);
                    });
                }
            }
            () = &mut drain => break,
        }
    }
    drop(listener); // our copy; the successor holds the socket
    draining.store(true, Ordering::SeqCst);
    coordinator.shutdown().await;
    if mode == "grestart" {
        grestart::shutdown()?;
    }
    Ok(())
}

/// Touches `mb` MB of new heap in the background and says so on stderr: the
/// memory a real server holds, made after start-up so that a restart's cost,
/// not the successor's start-up, is what grows with it.
fn touch_heap(mb: usize) {
    std::thread::spawn(move || {
        let mut heap = vec![0u8; mb << 20];
        for page in heap.chunks_mut(4096) {
            page[0] = 1;
        }
        eprintln!("bench server: heap of {mb} MB touched");
        std::mem::forget(heap);
    });
}

/// HTTP/1.1 keep-alive; once draining, the next answer says `Connection: close`.
/// `GET /heap/N` also makes the server touch N MB (see [`touch_heap`]).
async fn connection(stream: TcpStream, generation: u64, draining: &AtomicBool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut idle_since = Instant::now();
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match tokio::time::timeout(Duration::from_millis(200), read.read_line(&mut line)).await
            {
                Err(_) if head.is_empty() && line.is_empty() => {
                    if draining.load(Ordering::SeqCst)
                        && idle_since.elapsed() > Duration::from_secs(5)
                    {
                        return Ok(());
                    }
                    continue;
                }
                Err(_) => continue,
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        if let Some(mb) = (head.strip_prefix("GET /heap/"))
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
        {
            touch_heap(mb);
        }
        let lower = head.to_ascii_lowercase();
        let close = draining.load(Ordering::SeqCst) || lower.contains("\r\nconnection: close");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Pid: {}\r\nX-Generation: {generation}\r\nConnection: {}\r\n\r\nok\n",
            std::process::id(),
            if close { "close" } else { "keep-alive" }
        );
        write.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
        idle_since = Instant::now();
    }
}
