//! A consumer service under test: a process with no listener to probe,
//! followed from generation to generation through grestart's own log
//! (`GRESTART_LOG=info`), and stopped with every generation it had.

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::log::{Log, follow_output};
use crate::process::{become_subreaper, kill, pidfd, reap, wait_exit, zombie_children};

/// How long a generation may take to start, to hand over or to drain.
const PATIENCE: Duration = Duration::from_secs(30);

pub struct Consumer {
    child: Child,
    /// The pid consuming now.
    pub pid: i32,
    /// Every pid that consumed and has not been reaped, for cleaning up.
    pids: Vec<i32>,
    log: Log,
}

impl Consumer {
    /// Starts `command` and waits until its first generation is ready. Its
    /// first line on stdout is the examples' start-up line,
    /// `NAME: pid PID generation 1 ...`.
    pub fn launch(mut command: Command) -> Consumer {
        become_subreaper();
        let mut child = command
            .env("GRESTART_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let pid = child.id() as i32;
        let (line, log) = follow_output(&mut child);
        let consumer = Consumer {
            child,
            pid,
            pids: vec![pid],
            log,
        };
        let started = format!(": pid {pid} generation 1 ");
        assert!(line.contains(&started), "not a start-up line: {line:?}");
        consumer.log.wait_for(
            &format!("grestart[{pid}] info: ready, generation 1"),
            PATIENCE,
        );
        consumer
    }

    /// Sends the restart signal and follows the successor once it is ready;
    /// then waits for the old generation to drain and exit, and reaps it.
    /// Returns how the old generation ended (a `waitpid` status).
    pub fn restart(&mut self) -> i32 {
        let old = self.pid;
        let exit = self.signal(libc::SIGUSR2);
        // "grestart[OLD] info: successor NEW ready after N ms"
        let ready = self.log.wait_for(" ready after ", PATIENCE);
        let successor = (ready.strip_prefix(&format!("grestart[{old}] info: successor ")))
            .and_then(|rest| rest.split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("not the hand-over of pid {old}: {ready:?}"));
        self.pid = successor;
        self.pids.push(successor);
        self.wait_gone(old, &exit)
    }

    /// Sends the restart signal for a restart that must fail, waits for the
    /// serving generation to say so, and returns that line.
    pub fn failed_restart(&self) -> String {
        kill(self.pid, libc::SIGUSR2);
        let line = self.log.wait_for("restart failed, still serving", PATIENCE);
        assert!(
            line.starts_with(&format!("grestart[{}] ", self.pid)),
            "{line}"
        );
        let zombies = zombie_children(self.pid);
        assert!(
            zombies.is_empty(),
            "the failed successor was reaped: {zombies:?}"
        );
        line
    }

    /// Stops the consuming generation with SIGTERM (its stop signal: drain,
    /// hooks, exit) and returns how it ended.
    pub fn stop(mut self) -> i32 {
        let exit = self.signal(libc::SIGTERM);
        self.wait_gone(self.pid, &exit)
    }

    /// Sends `signal` to the consuming generation; its pidfd.
    fn signal(&self, signal: i32) -> OwnedFd {
        let exit = pidfd(self.pid).expect("pidfd of the consuming generation");
        kill(self.pid, signal);
        exit
    }

    fn wait_gone(&mut self, pid: i32, exit: &OwnedFd) -> i32 {
        assert!(
            wait_exit(exit, PATIENCE),
            "generation pid {pid} did not exit"
        );
        self.pids.retain(|&p| p != pid);
        reap(pid).expect("the generation was our child")
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if let Ok(exit) = pidfd(pid) {
                kill(pid, libc::SIGKILL);
                wait_exit(&exit, Duration::from_secs(5));
                reap(pid);
            }
        }
        let _ = self.child.wait();
    }
}
