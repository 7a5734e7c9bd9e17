//! Installing for C and C++ users: a versioned library whose soname is
//! libgrestart.so.MAJOR and which exports only gr_* symbols, headers, and a
//! pkg-config file with which both examples build, link and run (its flags
//! alone: they carry the rpath of a prefix the loader does not search); a patch
//! release installed over it in place, under a running server; uninstalling.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn install_to_a_prefix_and_build_with_pkg_config() {
    let dir = testkit::TempDir::new("install");
    let prefix = dir.join("prefix");
    testkit::run(
        Command::new(testkit::repo().join("scripts/install"))
            .arg("--prefix")
            .arg(&prefix),
    );

    let lib = prefix.join("lib");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    let dynamic = testkit::run(
        Command::new("readelf")
            .arg("-d")
            .arg(lib.join("libgrestart.so")),
    );
    assert!(
        dynamic.contains(&format!("[libgrestart.so.{major}]")),
        "soname: {dynamic}"
    );
    let exports = testkit::run(
        Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(lib.join("libgrestart.so")),
    );
    let foreign: Vec<&str> = exports
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| !s.starts_with("gr_"))
        .collect();
    assert!(foreign.is_empty(), "exports other than gr_*: {foreign:?}");

    let flags = testkit::run(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "grestart"])
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig")),
    );
    let flags: Vec<&str> = flags.split_whitespace().collect();
    for (compiler, source, binary) in [
        ("cc", "examples/c/http_server.c", "server_c"),
        ("c++", "examples/cpp/http_server.cpp", "server_cpp"),
    ] {
        testkit::run(
            Command::new(compiler)
                .arg(testkit::repo().join(source))
                .args(["-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
                .arg(dir.join(binary))
                .args(&flags),
        );
    }
    let linked = testkit::run(Command::new("ldd").arg(dir.join("server_cpp")));
    assert!(
        linked.contains(&format!("libgrestart.so.{major} => {}", lib.display())),
        "{linked}"
    );

    // The installed C example serves and restarts.
    testkit::become_subreaper();
    let mut server = testkit::Server::start(
        &dir.join("server_c"),
        &[],
        "127.0.0.1:0",
        &[("GRESTART_LOG", "warn")],
    );
    server.restart(libc::SIGUSR2);
    server.stop();
}

/// The C example built against the copy installed under `prefix`.
fn build_against(prefix: &Path, binary: &Path) {
    let lib = prefix.join("lib");
    let flags = testkit::run(
        Command::new("pkg-config")
            .args(["--cflags", "--libs", "grestart"])
            .env("PKG_CONFIG_PATH", lib.join("pkgconfig")),
    );
    testkit::run(
        Command::new("cc")
            .arg(testkit::repo().join("examples/c/http_server.c"))
            .args(["-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
            .arg(binary)
            .args(flags.split_whitespace()),
    );
}

/// The sources of the next patch release, made from this one in `dir`:
/// what `scripts/install` builds from, with the patch version raised.
fn next_patch_release(dir: &Path) -> (PathBuf, String) {
    let next = dir.join("next");
    let repo = testkit::repo();
    // What cargo reads of the manifest (its examples and benchmarks, the
    // workspace's test kit) and what scripts/install builds and installs.
    for part in [
        "Cargo.lock",
        "build.rs",
        "src",
        "include",
        "bindings/cpp",
        "scripts",
        "examples",
        "benches",
        "testkit",
    ] {
        let to = next.join(part);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        testkit::run(Command::new("cp").arg("-r").arg(repo.join(part)).arg(&to));
    }
    let version = format!(
        "{}.{}.{}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH").parse::<u32>().unwrap() + 1
    );
    let manifest = std::fs::read_to_string(repo.join("Cargo.toml"))
        .unwrap()
        .replacen(
            &format!("version = \"{}\"", env!("CARGO_PKG_VERSION")),
            &format!("version = \"{version}\""),
            1,
        );
    std::fs::write(next.join("Cargo.toml"), manifest).unwrap();
    (next, version)
}

#[test]
fn a_patch_release_installed_in_place_keeps_servers_running_and_uninstall_removes_it() {
    let dir = testkit::TempDir::new("upgrade");
    let prefix = dir.join("prefix");
    let lib = prefix.join("lib");
    testkit::run(
        Command::new(testkit::repo().join("scripts/install"))
            .arg("--prefix")
            .arg(&prefix),
    );
    let server_c = dir.join("server_c");
    build_against(&prefix, &server_c);
    let launcher = testkit::run(Command::new(prefix.join("bin/grestart")).arg("--version"));
    assert_eq!(
        launcher.trim(),
        format!("grestart {}", env!("CARGO_PKG_VERSION")),
        "the launcher is installed"
    );

    testkit::become_subreaper();
    let mut server =
        testkit::Server::start(&server_c, &[], "127.0.0.1:0", &[("GRESTART_LOG", "warn")]);
    let load = testkit::Load::start(server.addr, 4, 4);
    let (next, version) = next_patch_release(&dir.0);
    // The same build directory: only grestart itself is compiled again.
    testkit::run(
        Command::new(next.join("scripts/install"))
            .arg("--prefix")
            .arg(&prefix)
            .env("CARGO_TARGET_DIR", testkit::repo().join("target/install")),
    );
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    assert_eq!(
        std::fs::read_link(lib.join(format!("libgrestart.so.{major}"))).unwrap(),
        PathBuf::from(format!("libgrestart.so.{version}"))
    );
    assert!(
        !lib.join(format!("libgrestart.so.{}", env!("CARGO_PKG_VERSION")))
            .exists(),
        "the release it replaced is gone from the prefix"
    );
    // The server built against the old release serves on, and restarts onto
    // the new one without having been rebuilt: the soname did not change.
    let old_pid = server.pid;
    server.restart(libc::SIGUSR2);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid)).unwrap();
    assert!(
        maps.contains(&format!("libgrestart.so.{version}")),
        "the successor of {old_pid} maps the new release:\n{maps}"
    );
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.failures);
    server.stop();

    testkit::run(
        Command::new(testkit::repo().join("scripts/uninstall"))
            .arg("--prefix")
            .arg(&prefix),
    );
    let left = testkit::run(
        Command::new("find")
            .arg(&prefix)
            .args(["-not", "-type", "d"]),
    );
    assert!(left.is_empty(), "left behind by uninstall:\n{left}");
    let again = Command::new(testkit::repo().join("scripts/uninstall"))
        .arg("--prefix")
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "uninstalling twice says nothing is installed"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("not installed"));
}
