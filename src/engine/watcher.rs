//! The thread that turns restart and stop signals and `grestart restart`
//! requests into restarts and drains, outside signal context.

use std::os::fd::BorrowedFd;

use super::ENGINE;
use crate::control::{Asked, Control, Reply};
use crate::handover::Heir;
use crate::log::info;
use crate::signal;
use crate::stub::Watch;

/// Reads restart and stop signals and control requests forever; a restart
/// runs here, outside signal context. A stop signal wins over restarts that
/// came with it. Requests that arrive during a restart get its outcome.
pub(super) fn watch_signals(pipe: BorrowedFd<'static>, control: Option<Control>) {
    signal::become_watcher();
    // Only the launcher keeps a probation; a generation is asked to restart.
    let requests = || {
        let requests = control.as_ref().map(Control::requests).unwrap_or_default();
        let (restarts, others): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .partition(|r| r.asked == Asked::Restart);
        let reply = Reply::Failed(libc::EINVAL, "only a launcher keeps a probation".into());
        others.into_iter().for_each(|r| r.answer(&reply));
        restarts
    };
    loop {
        let arrived = signal::wait(pipe, control.as_ref().map(Control::fd));
        let mut waiting = if arrived.control {
            requests()
        } else {
            Vec::new()
        };
        let Some(engine) = ENGINE.get() else {
            let reply = Reply::Failed(libc::EAGAIN, "grestart is starting".into());
            waiting.into_iter().for_each(|r| r.answer(&reply));
            continue;
        };
        let serving = (engine.watch.as_ref().and_then(Watch::serving))
            .or_else(|| engine.heir_lock().as_ref().map(Heir::pid));
        if let Some(serving) = serving {
            // A successor serves: requests are for it, and so are the
            // operator's signals while we are the process an init watches.
            waiting
                .into_iter()
                .for_each(|r| r.answer(&Reply::Ask(serving)));
            if engine.watch.is_some() && (arrived.stop || arrived.restarts > 0) {
                let signo = if arrived.stop {
                    signal::stop_signal()
                } else {
                    signal::current()
                };
                info!("forwarding signal {signo} to the serving generation, pid {serving}");
                // SAFETY: kill has no memory-safety requirements.
                unsafe { libc::kill(serving, signo) };
            } else if arrived.restarts > 0 {
                // Not a warning: `systemctl kill -s USR2` signals every process.
                let signo = signal::current();
                info!(
                    "signal {signo} restarts nothing here: this process drains; pid {serving} \
                     serves, send it there"
                );
            }
            continue;
        }
        let mut stop = arrived.stop;
        if (arrived.restarts > 0 || !waiting.is_empty()) && !stop {
            let _busy = signal::Busy::new();
            let outcome = engine.restart_coalescing(
                || {
                    let during = signal::drain(pipe);
                    stop = during.stop;
                    during.restarts
                },
                |pid| {
                    waiting.extend(requests());
                    let reply = Reply::Restarted(pid);
                    waiting.drain(..).for_each(|r| r.answer(&reply));
                },
            );
            waiting.extend(requests());
            let reply = Reply::of(&outcome);
            waiting.drain(..).for_each(|r| r.answer(&reply));
        }
        let reply = Reply::Failed(libc::ESHUTDOWN, "this process is stopping".into());
        waiting.into_iter().for_each(|r| r.answer(&reply));
        if stop {
            info!("stop signal: draining");
            engine.begin_drain();
        }
    }
}
