//! Logging: the level, and a callback instead of stderr.

use std::ffi::{CString, c_char, c_int, c_void};

use super::{UserArg, call};
use crate::error::fail;
use crate::log::{self, Level};

/// Nothing is logged.
pub const GR_LOG_OFF: c_int = 0;
/// Only failures are logged.
pub const GR_LOG_ERROR: c_int = 1;
/// Failures and things grestart worked around are logged.
pub const GR_LOG_WARN: c_int = 2;
/// Lifecycle events are logged too (the default).
pub const GR_LOG_INFO: c_int = 3;
/// Everything, including details of each hand-over.
pub const GR_LOG_DEBUG: c_int = 4;

/// A log destination: called with a `GR_LOG_*` level, one NUL-terminated line
/// (valid only during the call) and the `arg` given to `gr_set_log_callback`.
/// It may be called from any thread, concurrently, and must not unwind.
pub type gr_log_fn =
    Option<unsafe extern "C" fn(level: c_int, message: *const c_char, arg: *mut c_void)>;

/// Logs up to `level` (`GR_LOG_OFF` .. `GR_LOG_DEBUG`); the default is
/// `GRESTART_LOG` from the environment, else `GR_LOG_INFO`. Returns 0, or -1
/// with errno `EINVAL` for another number.
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_log_level(level: c_int) -> c_int {
    call(|| {
        if level != GR_LOG_OFF && Level::from_number(level).is_none() {
            return Err(fail(
                libc::EINVAL,
                format!("log level {level} is not GR_LOG_OFF..GR_LOG_DEBUG"),
            ));
        }
        log::set_level(Level::from_number(level));
        Ok(0)
    })
}

/// Sends log lines to `callback(level, line, arg)` instead of stderr (NULL:
/// back to stderr). The callback may run on any thread. Returns 0 once no
/// thread runs the previous callback any more, so its `arg` may be freed
/// then; called from inside a callback, it returns at once (that callback is
/// still running on this thread).
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_log_callback(callback: gr_log_fn, arg: *mut c_void) -> c_int {
    let arg = UserArg(arg);
    call(|| {
        let logger = callback.map(|callback| {
            let forward = move |level: Level, line: &str| {
                let line = CString::new(line.replace('\0', " ")).unwrap_or_default();
                // SAFETY: the application's callback, a valid C string, its argument.
                unsafe { callback(level as c_int, line.as_ptr(), arg.get()) };
            };
            std::sync::Arc::new(forward) as log::Logger
        });
        log::set_logger(logger);
        Ok(0)
    })
}
