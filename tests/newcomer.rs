//! The newcomer's path, as printed: every `sh` block of README.md marked
//! `<!-- run: NAME -->` runs here exactly as a newcomer pastes it into a shell
//! at the repository root. Nothing of the test's own environment leaks in: it
//! is emptied but for `PATH` and where rustup keeps the toolchain (no
//! `LD_LIBRARY_PATH` from cargo, which would find a library the printed
//! commands do not tell the loader about), and `HOME` is a scratch directory,
//! so that `--prefix "$HOME/.local"` installs there.
//!
//! The line that names `127.0.0.1:8080` starts the server: the lines before
//! it run first, in one shell, stopping at the first that fails; the server
//! is started (on a free port instead of 8080, the one change to what is
//! printed), must answer, restarts on `SIGUSR2` and is stopped; the lines
//! after it run last.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use testkit::{Server, TempDir};

/// The blocks this file runs, one test each.
const BLOCKS: [&str; 6] = [
    "c-quickstart",
    "cpp-quickstart",
    "rust-quickstart",
    "axum",
    "python-quickstart",
    "install",
];

const PRINTED_ADDRESS: &str = "127.0.0.1:8080";

#[test]
fn c_quick_start() {
    run_as_printed("c-quickstart");
}

#[test]
fn cpp_quick_start() {
    run_as_printed("cpp-quickstart");
}

#[test]
fn rust_quick_start() {
    run_as_printed("rust-quickstart");
}

#[test]
fn the_axum_example() {
    run_as_printed("axum");
}

#[test]
fn python_quick_start() {
    run_as_printed("python-quickstart");
}

#[test]
fn install_and_build_with_pkg_config() {
    run_as_printed("install");
}

/// The first of the README's two commands, as printed: it restarts the C
/// example under load and fails unless no request failed.
#[test]
fn the_demo_runs_as_printed() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let readme = std::fs::read_to_string(testkit::repo().join("README.md")).unwrap();
    let demo = (readme.lines())
        .find(|l| l.starts_with("cargo run --release --example demo"))
        .expect("README.md prints the demo's command");
    let home = TempDir::new("newcomer-demo");
    shell(&[demo.to_string()], &home.0);
}

#[test]
fn every_marked_block_is_run() {
    let readme = std::fs::read_to_string(testkit::repo().join("README.md")).unwrap();
    let mut marked: Vec<&str> = (readme.lines())
        .filter_map(|l| l.strip_prefix("<!-- run: ")?.strip_suffix(" -->"))
        .collect();
    let mut tested = BLOCKS;
    marked.sort_unstable();
    tested.sort_unstable();
    assert_eq!(
        marked, tested,
        "README.md's run blocks and this file's tests"
    );
}

/// The lines of the `sh` block marked `<!-- run: name -->`.
fn printed(name: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(testkit::repo().join("README.md")).unwrap();
    let mut lines = readme.lines();
    let marker = format!("<!-- run: {name} -->");
    lines
        .by_ref()
        .find(|l| *l == marker)
        .unwrap_or_else(|| panic!("README.md has no {marker}"));
    assert_eq!(
        lines.next(),
        Some("```sh"),
        "{marker} is not before a sh block"
    );
    lines
        .take_while(|l| *l != "```")
        .map(str::to_string)
        .collect()
}

/// `command` in a newcomer's shell at the repository root, whose home is `home`.
fn as_a_newcomer<'a>(command: &'a mut Command, home: &Path) -> &'a mut Command {
    let real_home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let toolchain = |var: &str, default: &str| {
        std::env::var_os(var).unwrap_or_else(|| real_home.join(default).into())
    };
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("CARGO_HOME", toolchain("CARGO_HOME", ".cargo"))
        .env("RUSTUP_HOME", toolchain("RUSTUP_HOME", ".rustup"))
        .current_dir(testkit::repo())
}

/// Runs `lines` in one shell that stops at the first failing line.
fn shell(lines: &[String], home: &Path) {
    let script = format!("set -euxo pipefail\n{}", lines.join("\n"));
    let mut bash = Command::new("bash");
    testkit::run(as_a_newcomer(bash.arg("-c").arg(script), home));
}

/// The blocks build into the same target/ (the C ones the same binary), and
/// the demo puts a load on the machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_as_printed(name: &str) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());

    let lines = printed(name);
    let at = (lines.iter().position(|l| l.contains(PRINTED_ADDRESS)))
        .unwrap_or_else(|| panic!("no line of {name} starts a server on {PRINTED_ADDRESS}"));
    let home = TempDir::new(&format!("newcomer-{name}"));
    shell(&lines[..at], &home.0);

    testkit::become_subreaper();
    let address = format!("127.0.0.1:{}", testkit::free_port());
    let start = format!("exec {}", lines[at].replace(PRINTED_ADDRESS, &address));
    let mut bash = Command::new("bash");
    as_a_newcomer(bash.arg("-c").arg(start), &home.0);
    // It answers, and a new generation answers after SIGUSR2.
    let mut server = Server::launch(bash);
    server.restart(libc::SIGUSR2);
    server.stop();

    shell(&lines[at + 1..], &home.0);
}
