//! The test kit every process-level test, the benchmarks and the demo share
//! (an unpublished crate of the workspace, a dev-dependency of `grestart`),
//! one concern per module: building (`build`), following processes
//! (`process`), a service in a PID namespace (`container`), a real systemd
//! booted in a container (`systemd`), a server under test (`server`) and
//! the output of its generations (`log`), the HTTP client (`http`) and load
//! (`load`), a consumer service under test (`consumer`) and its broker
//! (`redis`), a file system that hangs (`mount`).
//!
//! It drives processes and sockets and does not depend on `grestart`: with
//! that cycle, grestart's unit tests would be one copy of the crate and the
//! kit would link another, whose types differ.

mod build;
mod consumer;
mod container;
mod http;
mod load;
mod log;
mod mount;
mod process;
mod redis;
mod server;
mod systemd;

pub use {
    build::*, consumer::*, container::*, http::*, load::*, log::*, mount::*, process::*, redis::*,
    server::*, systemd::*,
};
