//! The restart signal: a handler that only writes to a self-pipe, and a
//! watcher thread that reads the pipe and runs the restart outside of signal
//! context, where it may allocate, lock and fork.
//!
//! A successor is started with the restart signal *ignored* (an ignored signal
//! stays ignored across exec), so that `systemctl kill -s USR2` or `pkill -USR2`
//! during a restart cannot kill a successor that is still starting. The
//! library's constructor replaces the ignore with a handler that only counts
//! (`start.rs`; a handler is not inherited by the programs the successor
//! starts before its engine does), as it guards the first generation; the
//! engine then installs the real handler on that same signal. Both were ours,
//! so the disposition to give back later is the default.
//!
//! grestart's threads never take the application's signals: each starts with
//! every signal blocked ([`spawn_thread`]), so a process-directed `SIGINT` or
//! `SIGTERM` goes to a thread of the application (CPython, say, only acts on a
//! signal its main thread receives). The watcher alone then unblocks the
//! restart signal, so that the restart works even in an application that blocks
//! it in all its threads (the `sigwait`/`signalfd` design): the kernel delivers
//! a process-directed signal to a thread that does not block it. A thread's mask
//! can only be changed by the thread itself, so when the restart signal changes
//! [`install`] asks the watcher, through the self-pipe, to change its own mask.
//!
//! An application may also name a *stop* signal (`gr_set_stop_signal`, e.g.
//! `SIGTERM`): the same handler writes another byte to the same pipe, the
//! watcher leaves that signal unblocked too, and begins the drain, as when a
//! successor took over.
//!
//! The parts: the handler and the signals it is installed on (`handler.rs`),
//! the watcher thread and its mask (`watcher.rs`), and the dispositions this
//! process was started with (`start.rs`), which every successor starts with.

mod handler;
mod start;
mod watcher;

pub(crate) use handler::{arm, check, current, install, install_stop, stop_signal, stopped_fd};
pub(crate) use start::{at_start, bit, started_ignoring};
pub(crate) use watcher::{Busy, become_watcher, drain, spawn_thread, wait};

/// What the self-pipe carries: a restart request, from the handler...
const RESTART_BYTE: u8 = 1;
/// ... or, from [`install`], a request to the watcher to unblock another signal...
const RETUNE_BYTE: u8 = 2;
/// ... or the stop signal, from the handler.
const STOP_BYTE: u8 = 3;
