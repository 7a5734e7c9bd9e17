//! Installing for C and C++ users: a versioned library whose soname is
//! libgrestart.so.MAJOR and which exports only gr_* symbols, headers, and a
//! pkg-config file with which both examples build, link and run.

mod support;

use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn install_to_a_prefix_and_build_with_pkg_config() {
    let dir = support::TempDir::new("install");
    let prefix = dir.join("prefix");
    run(Command::new(support::repo().join("scripts/install"))
        .arg("--prefix")
        .arg(&prefix));

    let lib = prefix.join("lib");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    let dynamic = run(Command::new("readelf")
        .arg("-d")
        .arg(lib.join("libgrestart.so")));
    assert!(
        dynamic.contains(&format!("[libgrestart.so.{major}]")),
        "soname: {dynamic}"
    );
    let exports = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib.join("libgrestart.so")));
    let foreign: Vec<&str> = exports
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| !s.starts_with("gr_"))
        .collect();
    assert!(foreign.is_empty(), "exports other than gr_*: {foreign:?}");

    let flags = run(Command::new("pkg-config")
        .args(["--cflags", "--libs", "grestart"])
        .env("PKG_CONFIG_PATH", lib.join("pkgconfig")));
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let rpath = format!("-Wl,-rpath,{}", lib.display());
    for (compiler, source, binary) in [
        ("cc", "examples/c/http_server.c", "server_c"),
        ("c++", "examples/cpp/http_server.cpp", "server_cpp"),
    ] {
        run(Command::new(compiler)
            .arg(support::repo().join(source))
            .args(["-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
            .arg(dir.join(binary))
            .args(&flags)
            .arg(&rpath));
    }
    let linked = run(Command::new("ldd").arg(dir.join("server_cpp")));
    assert!(
        linked.contains(&format!("libgrestart.so.{major} => {}", lib.display())),
        "{linked}"
    );

    // The installed C example serves and restarts.
    support::become_subreaper();
    let mut server = support::Server::start(
        &dir.join("server_c"),
        &[],
        "127.0.0.1:0",
        &[("GRESTART_LOG", "warn")],
    );
    server.restart(libc::SIGUSR2);
    server.stop();
}
