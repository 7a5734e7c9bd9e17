//! The child between the spawn and `execve`: a straight line of
//! async-signal-safe system calls over the plan built before the spawn, and
//! the report of the step that failed.

use std::io;
use std::os::fd::RawFd;
use std::ptr;

use nix::sys::signal::SigSet;

use super::Prepared;
use crate::protocol::{FIRST_FD, LISTEN_PID};
use crate::sys::{self, KernelSigaction};

/// Sent by the child when it cannot exec, followed by a stage byte and the errno.
pub(super) const FAILED_BYTE: u8 = b'E';
pub(super) const STAGE_FDS: u8 = 1;
pub(super) const STAGE_CWD: u8 = 2;
const STAGE_EXEC: u8 = 3;

/// The child between fork and exec. Only async-signal-safe system calls, and
/// nothing that can panic (no unwinding in a child that shares our memory).
///
/// # Safety
/// Must be called only in a freshly forked child, with `plan` built before the fork.
pub(super) unsafe fn exec_child(plan: &mut Prepared<'_>) -> ! {
    // Handlers are reset by exec anyway, but ignored signals stay ignored.
    // The successor starts with the dispositions the first generation was
    // started with: what was ignored then (SIGPIPE under systemd, SIGHUP
    // under nohup) is ignored, everything else (what the application ignored
    // since, the parent's handlers) at its default. And the restart signal is
    // ignored until the successor's grestart installs its handler, so that a
    // restart signal sent to every process of the service cannot kill a
    // successor that is still starting.
    let default = KernelSigaction::default(); // SIG_DFL, no flags, empty mask
    let ignore = KernelSigaction {
        handler: libc::SIG_IGN,
        ..KernelSigaction::default()
    };
    for signo in sys::SIGNALS.filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
        let action = if plan.ignored >> (signo - 1) & 1 == 1 {
            &ignore
        } else {
            &default
        };
        sys::set_disposition(signo, action);
    }

    // First lift every fd above the target range, so that moving one into
    // place never overwrites another that is still to be moved; dup2 onto the
    // target then also clears close-on-exec, which a lifted fd never equals
    // (dup2 of an fd onto itself would keep the flag). The last source is
    // the child's end of the channel, where failures are reported.
    let Some(&(mut report_fd)) = plan.sources.last() else {
        // SAFETY: _exit ends this child only.
        unsafe { libc::_exit(127) }
    };
    let count = plan.sources.len() as RawFd;
    let above = FIRST_FD + count;
    for (lifted, &source) in plan.lifted.iter_mut().zip(&plan.sources) {
        // SAFETY: fcntl on an fd of the plan.
        *lifted = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above) };
        if *lifted < 0 {
            // SAFETY: report_fd is the channel, open in this child.
            unsafe { child_failed(report_fd, STAGE_FDS) }
        }
    }
    for (target, &lifted) in (FIRST_FD..).zip(&plan.lifted) {
        // SAFETY: dup2 of an fd we just made onto a number we own in the child.
        if unsafe { libc::dup2(lifted, target) } < 0 {
            // SAFETY: as above.
            unsafe { child_failed(report_fd, STAGE_FDS) }
        }
    }
    report_fd = above - 1;
    if !plan.channel_survives_exec {
        // SAFETY: fcntl on the channel's new number.
        unsafe { libc::fcntl(report_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // Nothing else of the parent's leaks into the successor.
    // SAFETY: close_range closes this child's copies of the fds only.
    if unsafe { libc::syscall(libc::SYS_close_range, above as u32, u32::MAX, 0) } < 0 {
        for fd in above..plan.fd_limit {
            // SAFETY: as close_range.
            unsafe { libc::close(fd) };
        }
    }

    // SAFETY: `listen_pid` holds LISTEN_PID_ENTRY bytes: the name, `=`, and
    // room for 20 digits and the NUL after them.
    unsafe {
        write_decimal(
            plan.listen_pid.add(LISTEN_PID.len() + 1),
            libc::getpid() as u32,
        )
    };

    // SAFETY: chdir with the NUL-terminated path the plan borrows.
    if unsafe { libc::chdir(plan.cwd.as_ptr()) } < 0 {
        // SAFETY: report_fd is the channel at its new number.
        unsafe { child_failed(report_fd, STAGE_CWD) }
    }
    // A fork from a thread that blocks signals would otherwise hand the
    // successor a blocked SIGTERM.
    let empty = SigSet::empty();
    // SAFETY: sigprocmask with a valid set, in this single-threaded child.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, empty.as_ref(), ptr::null_mut()) };
    // SAFETY: the program's path, and argv and envp as NULL-terminated
    // arrays of NUL-terminated strings, all built before the fork.
    unsafe { libc::execve(plan.exe.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    // SAFETY: as above.
    unsafe { child_failed(report_fd, STAGE_EXEC) }
}

/// Writes `n` in decimal and a NUL at `out`, which has room for 21 bytes.
///
/// # Safety
/// `out` must be valid for 21 bytes of writes.
unsafe fn write_decimal(out: *mut u8, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: at most 10 digits and the NUL, within the caller's 21 bytes.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above.
    unsafe { *out.add(len) = 0 };
}

/// Tells the parent which step failed with which errno, then exits.
///
/// # Safety
/// Only in the child, before exec: it ends the process.
unsafe fn child_failed(report_fd: RawFd, stage: u8) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut message = [FAILED_BYTE, stage, 0, 0, 0, 0];
    message[2..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: send of a local buffer; a closed or broken channel only fails.
    unsafe {
        libc::send(
            report_fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    // SAFETY: _exit ends this child only, running nothing of the parent's.
    unsafe { libc::_exit(127) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_pid_fits_in_place() {
        let mut buf = [b'x'; 21];
        for (n, text) in [
            (0u32, "0"),
            (7, "7"),
            (4194304, "4194304"),
            (u32::MAX, "4294967295"),
        ] {
            // SAFETY: `buf` has the 21 bytes write_decimal may write.
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], text.as_bytes());
        }
    }
}
