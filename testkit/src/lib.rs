//! The test kit every process-level test, the benchmarks and the demo share
//! (an unpublished crate of the workspace, a dev-dependency of `grestart`),
//! one concern per module: building (`build`), following processes
//! (`process`), a service in a PID namespace (`container`), a real systemd
//! booted in a container (`systemd`), a server under test (`server`), the
//! HTTP client (`http`) and load (`load`), a consumer service under test
//! (`consumer`) and its broker (`redis`), a file system that hangs (`mount`).
//!
//! It drives processes and sockets and never links grestart itself: a kit
//! that depended on the crate it tests would be a second copy of it.

mod build;
mod consumer;
mod container;
mod http;
mod load;
mod mount;
mod process;
mod redis;
mod server;
mod systemd;

pub use {
    build::*, consumer::*, container::*, http::*, load::*, mount::*, process::*, redis::*,
    server::*, systemd::*,
};
