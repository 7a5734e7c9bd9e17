//! The test kit every process-level test, the demo and the benchmark share,
//! one concern per module: building (`build`), following processes
//! (`process`), a service in a PID namespace (`container`), a real systemd
//! booted in a container (`systemd`), a server under test (`server`), the
//! HTTP client (`http`) and load (`load`), a consumer service under test
//! (`consumer`) and its broker (`redis`), a file system that hangs (`mount`).
#![allow(dead_code)] // each test binary uses a different part

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

// Not every test binary uses every module.
#[allow(unused_imports)]
pub use {
    build::*, consumer::*, container::*, http::*, load::*, mount::*, process::*, redis::*,
    server::*, systemd::*,
};
