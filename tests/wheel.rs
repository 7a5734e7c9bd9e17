//! The Python package as a user installs it: `scripts/build-wheel` makes a
//! manylinux wheel (library inside) and the sdist it was built from, without
//! a deprecation warning; the wheel installs into a fresh virtualenv on a
//! PATH with no cargo, where the Python test suite passes and a server
//! restarts under load on the installed copy.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::TempDir;

/// This PATH without the directories that hold a `cargo`.
fn path_without_cargo() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|dir| !dir.join("cargo").exists())
        .collect();
    std::env::join_paths(kept).expect("a PATH")
}

/// `command` as a user without a Rust toolchain runs it: no cargo on PATH,
/// nothing pointing at this repository's package or library.
fn as_a_user(command: &mut Command) -> &mut Command {
    command
        .env("PATH", path_without_cargo())
        .env_remove("PYTHONPATH")
        .env_remove("GRESTART_LIBRARY")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN")
}

fn the_one(dir: &Path, suffix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {suffix} in {}: {found:?}",
        dir.display()
    );
    found.into_iter().next().unwrap()
}

#[test]
fn the_wheel_installs_and_serves_without_a_rust_toolchain() {
    let repo = testkit::repo();
    let built = testkit::run(Command::new(repo.join("scripts/build-wheel")).current_dir(&repo));
    assert!(
        !built.to_lowercase().contains("deprecat"),
        "the build warns of a deprecation:\n{built}"
    );
    let words = built.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("is consistent with the following platform tag: \"manylinux_"),
        "auditwheel show: {built}"
    );
    let wheels = repo.join("target/wheels");
    let wheel = the_one(&wheels, ".whl");
    let name = wheel.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.contains("-py3-none-manylinux_") && name.ends_with("_x86_64.whl"),
        "a py3-none-manylinux wheel, not {name}"
    );
    the_one(&wheels, ".tar.gz"); // the sdist the wheel was built from

    let dir = TempDir::new("wheel");
    let venv = dir.join("venv");
    testkit::run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    let python = venv.join("bin/python");
    let check_cargo = Command::new("sh")
        .args(["-c", "command -v cargo"])
        .env("PATH", path_without_cargo())
        .output()
        .unwrap();
    assert!(!check_cargo.status.success(), "cargo is still on the PATH");
    testkit::run(as_a_user(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "pytest"])
            .arg(format!("{}[aiohttp,uvicorn]", wheel.display())),
    ));
    let installed = testkit::run(as_a_user(Command::new(&python).args([
        "-c",
        "import grestart, os; print(grestart.__file__); print(os.listdir(os.path.dirname(grestart.__file__)))",
    ])
    .current_dir(&dir.0)));
    assert!(
        installed.starts_with(&venv.display().to_string()) && installed.contains("libgrestart.so"),
        "grestart and its library come from the wheel: {installed}"
    );

    // The launcher is on the venv's PATH, as `pip install` users run it.
    let launcher = testkit::run(as_a_user(
        Command::new(venv.join("bin/grestart")).arg("--version"),
    ));
    assert_eq!(
        launcher.trim(),
        format!("grestart {}", env!("CARGO_PKG_VERSION")),
        "the wheel ships the launcher"
    );

    let tests = testkit::run(as_a_user(
        Command::new(&python)
            .args(["-m", "pytest", "-p", "no:cacheprovider", "-q"])
            .arg(repo.join("bindings/python/tests"))
            .current_dir(&dir.0),
    ));
    println!("{tests}");

    let mut server = Command::new(&python);
    as_a_user(
        server
            .arg(repo.join("examples/python/http_server.py"))
            .arg("127.0.0.1:0")
            .env("GRESTART_LOG", "warn"),
    );
    testkit::restarts_of(server, 5, None::<fn()>);
}
