//! `grestart run`: the command line of the stable process (`supervise/`).
//!
//! ```text
//! grestart run [OPTIONS] -- PROGRAM [ARGS...]
//! ```
//!
//! Without `--listen` the program links grestart and restarts itself; the
//! launcher keeps the container (or systemd's main process) alive and routes
//! the signals. With `--listen` the launcher holds the sockets and restarts a
//! program that only knows systemd's `LISTEN_FDS`.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::address::Address;
use crate::control::{Reply, request_restart};
use crate::error::{errno_of, fail};
use crate::log::{error, info};
use crate::notify;
use crate::supervise::{FORWARDED, Probe, Recovery, Restarter, Supervisor};

const USAGE: &str = "\
usage: grestart run [OPTIONS] -- PROGRAM [ARGS...]
       grestart restart (--pid PID | --pid-file FILE) [--timeout SECONDS]
       grestart stop (--pid PID | --pid-file FILE) [--timeout SECONDS]

Runs PROGRAM and stays as the stable process of the service (a container's
PID 1, systemd's main process): reaps orphans, forwards signals to the
generation that serves, exits with its status once no generation is left.

  --listen ADDRESS[=NAME]  hold a listening socket for a program that does not
                           link grestart and pass it the systemd way
                           (LISTEN_FDS); ADDRESS as gr_listen takes it
                           (tcp://HOST:PORT, HOST:PORT, unix:PATH); repeatable.
                           The launcher then does the restarts itself.
  --signal SIG             the restart signal (default USR2)
  --forward SIG,SIG...     signals forwarded to the serving generation
                           (default HUP,INT,QUIT,TERM,USR1,USR2)
  --probation SECONDS      a new generation that dies or fails the health
                           check this soon after it took over is replaced by
                           the last good release, on the same sockets
                           (default 10; 0: none; the program may ask for its
                           own with gr_set_probation_ms). A serving generation
                           that dies later is restored the same way, at most
                           once per probation window
  --health-check URL       during a probation, GET http://HOST:PORT/PATH
                           every 0.2 s; two failures in a row (no 2xx within
                           1 s) kill the new generation and roll back
With --listen only:
  --stop-signal SIG        asks the old instance to stop once the new one is
                           ready (default TERM)
  --ready-timeout SECONDS  a new instance not ready by then is killed and the
                           old one serves on (default 60)
  --ready-delay SECONDS    for programs that never send READY=1: a new
                           instance alive this long counts as ready

grestart restart asks a running server (or the launcher in front of it) to
restart and waits for the outcome: prints the new generation's pid and exits
0, or says why the restart failed and exits 1 (the server serves on). Under
the launcher the outcome comes after the probation (a rollback is a
failure). It is the ExecReload= of a systemd unit: systemctl reload then fails when the
restart did. --timeout defaults to 90 seconds.

grestart stop sends SIGTERM to the process and waits until it has exited
(exit 0; 1 if it is still there after --timeout). It is the ExecStop= of a
systemd unit: systemd does not wait for a main process it did not start (an
heir), and would kill it before it drained.

grestart --version";

/// What `grestart run` was asked to do.
#[derive(Debug, PartialEq)]
struct Options {
    listen: Vec<(String, Option<String>)>,
    restart_signal: Signal,
    forwarded: Vec<Signal>,
    stop_signal: Signal,
    ready_timeout: Duration,
    ready_delay: Option<Duration>,
    probation: Duration,
    health_check: Option<Probe>,
    program: Vec<OsString>,
}

/// The `grestart` binary's `main`: returns the exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let args: Vec<OsString> = args.into_iter().skip(1).collect();
    match args.first().map(|a| a.as_bytes()) {
        Some(b"run") => {}
        Some(b"restart") => return restart(&args[1..]),
        Some(b"stop") => return stop(&args[1..]),
        Some(b"--version") => {
            println!("grestart {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Some(b"--help" | b"-h") => {
            println!("{USAGE}");
            return 0;
        }
        _ => {
            eprintln!("{USAGE}");
            return 2;
        }
    }
    let options = match parse(&args[1..]) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("grestart: {e}\n\n{USAGE}");
            return 2;
        }
    };
    match run(options) {
        Ok(status) => status,
        Err(e) => {
            error!("{e}");
            1
        }
    }
}

fn run(options: Options) -> io::Result<i32> {
    let exe = resolve(&options.program[0])?;
    let argv: Vec<CString> = (options.program.iter())
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| fail(libc::EINVAL, "an argument holds a NUL byte"))?;
    let restarter = if options.listen.is_empty() {
        None
    } else {
        let mut listeners = Vec::new();
        for (text, name) in &options.listen {
            let address = Address::parse(text)?;
            let name = name.clone().unwrap_or_else(|| Address::default_name(text));
            crate::protocol::check_name(&name)?;
            listeners.push((name, address.bind()?));
        }
        Some(Restarter::new(
            exe.clone(),
            argv.clone(),
            listeners,
            options.restart_signal,
            options.stop_signal,
            options.ready_delay,
            options.ready_timeout,
        ))
    };
    let standalone = restarter.is_some();
    let mut supervisor = Supervisor::new(notify::Listener::bind()?, options.forwarded, restarter)?;
    // A program that links grestart is started with its restart signal
    // ignored, until its library handles it: an early signal never kills it.
    let ignored = if standalone {
        0
    } else {
        crate::signal::bit(options.restart_signal as i32)
    };
    supervisor.recover_with(
        Recovery::new(options.probation, options.health_check),
        ignored,
        options.ready_timeout,
    );
    let pid = supervisor.start(&exe, &argv, ignored, None, None)?;
    info!(
        "started {} as pid {pid}{}",
        exe.to_string_lossy(),
        if standalone {
            ", holding its sockets"
        } else {
            ""
        }
    );
    supervisor.serve(pid);
    Ok(supervisor.run())
}

/// `grestart restart`: see the usage.
fn restart(args: &[OsString]) -> i32 {
    let target = match restart_target(args) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("grestart restart: {e}\n\n{USAGE}");
            return 2;
        }
    };
    match target.and_then(|(pid, timeout)| request_restart(pid, timeout)) {
        Ok(Reply::Restarted(pid)) => {
            println!("{pid}");
            0
        }
        Ok(Reply::Failed(_, why)) => {
            eprintln!("grestart restart: the restart failed: {why}");
            1
        }
        Ok(Reply::Ask(pid) | Reply::Supervised(pid)) => {
            eprintln!("grestart restart: no answer, only a referral to pid {pid}");
            1
        }
        Err(e) => {
            eprintln!("grestart restart: {e}");
            1
        }
    }
}

/// `grestart stop`: see the usage.
fn stop(args: &[OsString]) -> i32 {
    let (pid, timeout) = match restart_target(args) {
        Ok(Ok(target)) => target,
        Ok(Err(e)) => {
            eprintln!("grestart stop: {e}");
            return 1;
        }
        Err(e) => {
            eprintln!("grestart stop: {e}\n\n{USAGE}");
            return 2;
        }
    };
    match crate::sys::terminate_and_wait(pid, timeout) {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("grestart stop: pid {pid} is still running after {timeout:?}");
            1
        }
        Err(e) => {
            eprintln!("grestart stop: pid {pid}: {e}");
            1
        }
    }
}

/// The pid and timeout `grestart restart` (or `stop`) was given; the pid file is read
/// (an outer error: it names no process) apart from bad usage.
fn restart_target(args: &[OsString]) -> io::Result<io::Result<(i32, Duration)>> {
    let usage = |why: String| fail(libc::EINVAL, why);
    let (mut pid, mut pid_file, mut timeout) = (None, None, Duration::from_secs(90));
    let mut rest = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.into())),
            _ => (arg.clone(), None),
        };
        let value = inline
            .or_else(|| rest.next())
            .ok_or_else(|| usage(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--pid" => {
                pid = Some(
                    value
                        .parse::<i32>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| usage(format!("--pid wants a process id, not {value:?}")))?,
                )
            }
            "--pid-file" => pid_file = Some(PathBuf::from(value)),
            "--timeout" => timeout = seconds("--timeout", &value)?,
            _ => return Err(usage(format!("unknown option {arg:?}"))),
        }
    }
    Ok(match (pid, pid_file) {
        (Some(pid), None) => Ok((pid, timeout)),
        (None, Some(file)) => std::fs::read_to_string(&file)
            .map_err(|e| fail(errno_of(&e), format!("{}: {e}", file.display())))
            .and_then(|text| {
                text.trim().parse::<i32>().map_err(|_| {
                    fail(
                        libc::EINVAL,
                        format!("{} holds {:?}, not a pid", file.display(), text.trim()),
                    )
                })
            })
            .map(|pid| (pid, timeout)),
        _ => return Err(usage("give exactly one of --pid and --pid-file".into())),
    })
}

fn parse(args: &[OsString]) -> io::Result<Options> {
    let usage = |why: String| fail(libc::EINVAL, why);
    let mut options = Options {
        listen: Vec::new(),
        restart_signal: Signal::SIGUSR2,
        forwarded: FORWARDED.to_vec(),
        stop_signal: Signal::SIGTERM,
        ready_timeout: crate::limits::DEFAULT_READY_TIMEOUT,
        ready_delay: None,
        probation: crate::limits::DEFAULT_PROBATION,
        health_check: None,
        program: Vec::new(),
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            options.program = rest.cloned().collect();
            break;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_ref(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().map(|v| v.to_string_lossy().into_owned()))
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match flag {
            "--listen" => {
                let value = value()?;
                let (address, name) = match value.rsplit_once('=') {
                    Some((address, name)) => (address.to_string(), Some(name.to_string())),
                    None => (value, None),
                };
                let address = if address.contains("://") || address.starts_with("unix:") {
                    address
                } else {
                    format!("tcp://{address}")
                };
                options.listen.push((address, name));
            }
            "--signal" => options.restart_signal = signal(&value()?)?,
            "--stop-signal" => options.stop_signal = signal(&value()?)?,
            "--forward" => {
                options.forwarded = (value()?.split(','))
                    .filter(|s| !s.is_empty())
                    .map(signal)
                    .collect::<io::Result<_>>()?;
            }
            "--ready-timeout" => options.ready_timeout = seconds(flag, &value()?)?,
            "--ready-delay" => options.ready_delay = Some(seconds(flag, &value()?)?),
            "--probation" => {
                let value = value()?;
                options.probation = match value.trim() {
                    "0" => Duration::ZERO,
                    text => seconds(flag, text)?,
                }
            }
            "--health-check" => {
                options.health_check = Some(Probe::parse(&value()?)?);
            }
            _ => return Err(usage(format!("unknown option {arg:?}"))),
        }
    }
    if options.program.is_empty() {
        return Err(usage("no PROGRAM after --".into()));
    }
    if options.listen.is_empty()
        && (options.ready_delay.is_some() || args.iter().any(|a| a == "--stop-signal"))
    {
        return Err(usage(
            "--stop-signal and --ready-delay need --listen: a program that links grestart \
             restarts itself"
                .into(),
        ));
    }
    if !options.forwarded.contains(&options.restart_signal) {
        options.forwarded.push(options.restart_signal);
    }
    Ok(options)
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
fn signal(text: &str) -> io::Result<Signal> {
    let text = text.trim();
    let parsed = match text.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let upper = text.to_ascii_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            name.parse::<Signal>().ok()
        }
    };
    match parsed {
        Some(Signal::SIGKILL | Signal::SIGSTOP) | None => Err(fail(
            libc::EINVAL,
            format!("{text:?} is not a signal that can be handled"),
        )),
        Some(signal) => Ok(signal),
    }
}

fn seconds(flag: &str, text: &str) -> io::Result<Duration> {
    match text.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
        _ => Err(fail(
            libc::EINVAL,
            format!("{flag} wants a positive number of seconds, not {text:?}"),
        )),
    }
}

/// The program as `execvp` would find it: a name with a `/` as it is, a bare
/// name on `PATH`.
fn resolve(program: &OsStr) -> io::Result<CString> {
    let path = if program.as_bytes().contains(&b'/') {
        Some(PathBuf::from(program))
    } else {
        let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        std::env::split_paths(&search)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    };
    let path = path.ok_or_else(|| {
        fail(
            libc::ENOENT,
            format!("{} not found on PATH", program.to_string_lossy()),
        )
    })?;
    CString::new(path.into_os_string().as_bytes())
        .map_err(|_| fail(libc::EINVAL, "the program's path holds a NUL byte"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests;
