//! One line per lifecycle event, to stderr or to the application's logger.
//!
//! The level comes from `GRESTART_LOG` (`off`, `error`, `warn`, `info`, `debug`)
//! at start-up and can be changed from code; the default is `info`, because a
//! restart is rare and an operator wants to see each one.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// How important a log line is; a lower number is more important.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed; the process carries on serving.
    Error = 1,
    /// Something unexpected that grestart worked around.
    Warn = 2,
    /// A lifecycle event: restart requested, successor ready, draining, exiting.
    Info = 3,
    /// Details useful when debugging a hand-over.
    Debug = 4,
}

impl Level {
    /// The level for a number as the C ABI passes it (1 = error .. 4 = debug).
    pub fn from_number(n: i32) -> Option<Level> {
        Some(match n {
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            _ => return None,
        })
    }

    fn parse(name: &str) -> Option<u8> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "0" => 0,
            "error" | "1" => 1,
            "warn" | "warning" | "2" => 2,
            "info" | "3" => 3,
            "debug" | "4" => 4,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

/// A destination for log lines other than stderr.
pub type Logger = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// 0 means "not read from the environment yet"; otherwise the max level + 1.
static THRESHOLD: AtomicU8 = AtomicU8::new(0);
static LOGGER: RwLock<Option<Logger>> = RwLock::new(None);

fn threshold() -> u8 {
    match THRESHOLD.load(Ordering::Relaxed) {
        0 => {
            let level = std::env::var("GRESTART_LOG")
                .ok()
                .and_then(|v| Level::parse(&v))
                .unwrap_or(Level::Info as u8);
            THRESHOLD.store(level + 1, Ordering::Relaxed);
            level
        }
        t => t - 1,
    }
}

/// Lines above `level` are dropped; `None` silences grestart completely.
pub fn set_level(level: Option<Level>) {
    THRESHOLD.store(level.map_or(0, |l| l as u8) + 1, Ordering::Relaxed);
}

/// Taken when a delivery ends, so that [`set_logger`] can wait for them.
static DELIVERIES: Mutex<()> = Mutex::new(());
static DELIVERY_ENDED: Condvar = Condvar::new();

thread_local! {
    /// This thread is inside the application's logger.
    static IN_LOGGER: Cell<bool> = const { Cell::new(false) };
}

/// One delivery to the application's logger, until dropped (also when the
/// logger panics).
struct Delivering {
    outer: bool,
}

impl Delivering {
    fn start() -> Delivering {
        let outer = IN_LOGGER.try_with(|l| l.replace(true)).unwrap_or(false);
        Delivering { outer }
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        let _ = IN_LOGGER.try_with(|l| l.set(self.outer));
        let _ended = DELIVERIES.lock().unwrap_or_else(|e| e.into_inner());
        DELIVERY_ENDED.notify_all();
    }
}

/// Send lines to `logger` instead of stderr (`None`: back to stderr).
///
/// Returns once no thread runs the previous logger any more, so that the
/// application may free what it used (its C `arg`). Called from inside a
/// logger it returns at once: that logger is running on this very thread.
pub fn set_logger(logger: Option<Logger>) {
    let previous = std::mem::replace(
        &mut *LOGGER.write().unwrap_or_else(|e| e.into_inner()),
        logger,
    );
    let Some(previous) = previous else { return };
    if IN_LOGGER.try_with(Cell::get).unwrap_or(false) {
        return;
    }
    // Every delivery under way holds a clone of it until it ends.
    let mut ended = DELIVERIES.lock().unwrap_or_else(|e| e.into_inner());
    while Arc::strong_count(&previous) > 1 {
        ended = DELIVERY_ENDED
            .wait(ended)
            .unwrap_or_else(|e| e.into_inner());
    }
}

pub(crate) fn enabled(level: Level) -> bool {
    level as u8 <= threshold()
}

thread_local! {
    /// Lines this thread logged while it holds the engine's lock, not yet delivered.
    static DEFERRED: RefCell<Option<Vec<(Level, String)>>> = const { RefCell::new(None) };
}

/// While a `Defer` lives, this thread's log lines are queued; they are
/// delivered when the outermost one drops. The engine holds one with its lock,
/// so that a logger which calls back into grestart never finds the lock taken
/// by its own thread (a deadlock).
pub(crate) struct Defer {
    outermost: bool,
}

impl Defer {
    pub(crate) fn new() -> Defer {
        // While the thread exits its locals may be gone: nothing is deferred
        // then, the lines go out at once.
        let outermost = DEFERRED
            .try_with(|d| {
                let mut queue = d.borrow_mut();
                let outermost = queue.is_none();
                if outermost {
                    *queue = Some(Vec::new());
                }
                outermost
            })
            .unwrap_or(false);
        Defer { outermost }
    }
}

impl Drop for Defer {
    fn drop(&mut self) {
        if self.outermost {
            let queued = DEFERRED.try_with(|d| d.take()).ok().flatten();
            for (level, line) in queued.into_iter().flatten() {
                deliver(level, &line);
            }
        }
    }
}

pub(crate) fn emit(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format!("{args}");
    // `try_with`: at exit (an `atexit` handler, a thread-local destructor)
    // the queue may be gone; the line then goes out at once.
    let deferred = DEFERRED
        .try_with(|d| match d.borrow_mut().as_mut() {
            Some(queue) => {
                queue.push((level, line.clone()));
                true
            }
            None => false,
        })
        .unwrap_or(false);
    if !deferred {
        deliver(level, &line);
    }
}

fn deliver(level: Level, line: &str) {
    let logger = LOGGER.read().unwrap_or_else(|e| e.into_inner()).clone();
    match logger {
        Some(logger) => {
            let _delivering = Delivering::start();
            // Declared after the guard, so dropped before it tells a waiting
            // set_logger, which then counts the clones left.
            let logger = logger;
            logger(level, line);
        }
        None => {
            // One write, so lines of several generations sharing stderr never interleave.
            let line = format!(
                "grestart[{}] {}: {line}\n",
                std::process::id(),
                level.label()
            );
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

macro_rules! error { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Error, format_args!($($t)*)) } }
macro_rules! warning { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Warn, format_args!($($t)*)) } }
macro_rules! info { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Info, format_args!($($t)*)) } }
macro_rules! debug { ($($t:tt)*) => { $crate::log::emit($crate::log::Level::Debug, format_args!($($t)*)) } }
pub(crate) use {debug, error, info, warning};

#[cfg(test)]
mod tests {
    use super::Level;

    #[test]
    fn level_names() {
        assert_eq!(Level::parse("WARN"), Some(2));
        assert_eq!(Level::parse("off"), Some(0));
        assert_eq!(Level::parse("loud"), None);
        assert_eq!(Level::from_number(4), Some(Level::Debug));
        assert_eq!(Level::from_number(9), None);
    }
}
