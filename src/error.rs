//! Errors: an `io::Error` that carries both an errno (for the C edge) and a
//! human message (for `gr_last_error`, Python's `OSError` and Rust's `Display`).

use std::fmt;
use std::io;

/// The payload of every error grestart makes itself.
#[derive(Debug)]
struct Failure {
    errno: i32,
    message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error with this errno and message.
pub(crate) fn fail(errno: i32, message: impl Into<String>) -> io::Error {
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(
        kind,
        Failure {
            errno,
            message: message.into(),
        },
    )
}

/// The last OS error, prefixed with what we were doing.
pub(crate) fn os_fail(context: impl fmt::Display) -> io::Error {
    with_context(io::Error::last_os_error(), context)
}

/// `err` with `context` in front of its message, keeping its errno.
pub(crate) fn with_context(err: io::Error, context: impl fmt::Display) -> io::Error {
    fail(errno_of(&err), format!("{context}: {err}"))
}

/// The errno that best describes `err` (`EIO` when it has none).
pub fn errno_of(err: &io::Error) -> i32 {
    if let Some(failure) = err.get_ref().and_then(|e| e.downcast_ref::<Failure>()) {
        return failure.errno;
    }
    err.raw_os_error().unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_message_survive() {
        let err = fail(libc::ENOTSOCK, "fd 7 is not a socket");
        assert_eq!(errno_of(&err), libc::ENOTSOCK);
        assert_eq!(err.to_string(), "fd 7 is not a socket");
        let err = with_context(err, "register \"web\"");
        assert_eq!(errno_of(&err), libc::ENOTSOCK);
        assert_eq!(err.to_string(), "register \"web\": fd 7 is not a socket");
    }

    #[test]
    fn plain_os_errors_keep_their_errno() {
        assert_eq!(
            errno_of(&io::Error::from_raw_os_error(libc::EBADF)),
            libc::EBADF
        );
        assert_eq!(errno_of(&io::Error::other("x")), libc::EIO);
    }
}
