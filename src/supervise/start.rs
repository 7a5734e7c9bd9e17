//! Starting an instance of the program under the stable process.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use super::Supervisor;
use crate::exec_watch::ExecWatch;
use crate::protocol::{LISTEN_FDNAMES, LISTEN_FDS, RESTORED, VARIABLES};
use crate::spawn::{self, Channel};

impl Supervisor {
    /// Starts the program (the first instance, or a new one for a restart, or
    /// the last good release `restored` with the environment it ran with):
    /// the listeners at fds 3.., our notification socket, an empty signal
    /// mask, and the dispositions we were started with (what systemd ignores
    /// stays ignored, as if it had started the program) plus `also_ignored`.
    /// With `exec_timeout`, a program whose exec has not ended by then (on a
    /// hung mount) is killed and the start fails, instead of holding the
    /// supervisor.
    pub(crate) fn start(
        &self,
        exe: &CStr,
        argv: &[CString],
        also_ignored: u64,
        exec_timeout: Option<Duration>,
        restored: Option<&[(OsString, OsString)]>,
    ) -> io::Result<i32> {
        let listeners = match (&self.restarter, &self.recovery) {
            (Some(restarter), _) => &restarter.listeners[..],
            // The sockets a program that links grestart left with us, for a
            // release we restore.
            (None, Some(recovery)) if restored.is_some() => recovery.stored(),
            _ => &[][..],
        };
        let base = match restored {
            Some(env) => env.to_vec(),
            None => std::env::vars_os().collect(),
        };
        let mut env: Vec<CString> = (base.into_iter())
            .filter(|(key, _)| {
                key != "NOTIFY_SOCKET"
                    && key != "FDSTORE"
                    && !VARIABLES.iter().any(|v| key.as_os_str() == *v)
            })
            .filter_map(|(key, value)| {
                let mut entry = key.into_vec();
                entry.push(b'=');
                entry.extend(value.into_vec());
                CString::new(entry).ok()
            })
            .collect();
        if self.recovery.is_some() {
            // We keep what a generation stores (`FDSTORE=1`), one per listener.
            env.extend(CString::new(format!(
                "FDSTORE={}",
                crate::limits::FD_STORE_MAX
            )));
        }
        if restored.is_some() {
            env.extend(CString::new(format!("{RESTORED}=1")));
        }
        let mut socket = b"NOTIFY_SOCKET=".to_vec();
        socket.extend(self.notify.name.clone().into_vec());
        env.extend(CString::new(socket));
        if !listeners.is_empty() {
            let names: Vec<&str> = listeners.iter().map(|(name, _)| name.as_str()).collect();
            env.extend(CString::new(format!("{LISTEN_FDS}={}", names.len())));
            env.extend(CString::new(format!(
                "{LISTEN_FDNAMES}={}",
                names.join(":")
            )));
        }
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
        let ignored = crate::signal::started_ignoring() | also_ignored;
        let watch = exec_timeout
            .map(|timeout| ExecWatch::new(timeout, Vec::new()))
            .transpose()?;
        let instance = spawn::spawn(
            exe,
            argv,
            c".",
            &env,
            &fds,
            ignored,
            Channel::ExecReport,
            watch.as_ref(),
        )?;
        match instance.exec_error(exe) {
            Some(e) => Err(e),
            None => Ok(instance.pid),
        }
    }
}
