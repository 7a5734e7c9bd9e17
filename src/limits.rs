//! Every limit and default of grestart, defined once.
//!
//! The `GR_` integers are the C header's macros of the same names (cbindgen
//! copies them, doc comments and all), which the C++ wrapper uses and the
//! Python package mirrors in a table that its tests check against the header.
//! The `Duration`s are the same values for Rust.

use std::time::Duration;

/// The longest listener name, in bytes: systemd's limit for a name in
/// `LISTEN_FDNAMES`, and what the one-byte length before each name in the
/// hand-over of connections carries. A buffer for a NUL-terminated name (as
/// `gr_adopt` fills) needs `GR_NAME_MAX + 1` bytes.
pub const GR_NAME_MAX: usize = 255;
const _: () = assert!(
    GR_NAME_MAX <= u8::MAX as usize,
    "a name's length travels in a byte"
);

/// How long a successor may take to become ready, from the start of the
/// restart, before it is killed and the old generation serves on, unless
/// `gr_set_ready_timeout_ms` (or `grestart run --ready-timeout`) says
/// otherwise; in milliseconds.
pub const GR_DEFAULT_READY_TIMEOUT_MS: u64 = 60_000;

/// How long a draining generation waits for its successor to take the
/// connections it handed over (counted from the last one it sent), and how
/// long it waits for room to send the next one; after that it shuts down, in
/// order, those not taken, and hands over no more. In milliseconds.
pub const GR_HAND_OVER_BOUND_MS: u64 = 2_000;

/// How long a draining server keeps a keep-alive connection that stays idle
/// when it cannot hand it over, before it closes it: the framework adapters'
/// default (Python's `idle_grace`) and the example servers' choice; in
/// milliseconds. grestart itself closes no connection of the application.
pub const GR_DEFAULT_IDLE_GRACE_MS: u64 = 2_000;

/// How many generations may drain at once behind the serving one. Each holds
/// its memory and its connections until they end; past this a restart is
/// refused with `EBUSY` (and the refusal reported), never queued or dropped.
pub const GR_MAX_DRAINING: u32 = 8;

/// [`GR_DEFAULT_READY_TIMEOUT_MS`], as [`set_ready_timeout`](crate::set_ready_timeout) takes it.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_millis(GR_DEFAULT_READY_TIMEOUT_MS);

/// [`GR_HAND_OVER_BOUND_MS`], as a `Duration`.
pub const HAND_OVER_BOUND: Duration = Duration::from_millis(GR_HAND_OVER_BOUND_MS);

/// [`GR_DEFAULT_IDLE_GRACE_MS`], as `grestart::tokio::drained` takes it.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_millis(GR_DEFAULT_IDLE_GRACE_MS);

/// How long `grestart run` keeps a new generation on probation after it took
/// over (`--probation`): if it dies or fails its health check within this,
/// the last good release is started in its place.
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(10);

/// The most listeners the launcher keeps for a program that links grestart
/// (the `$FDSTORE` it is started with).
pub(crate) const FD_STORE_MAX: usize = 64;
