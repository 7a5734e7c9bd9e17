//! Building what the tests run: the repository's paths, a temporary
//! directory, and the C and C++ example servers compiled against the library.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The repository root: the parent of this crate's directory (the kit's own
/// `CARGO_MANIFEST_DIR` is `testkit/`, not the crate under test's).
pub fn repo() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent()
        .expect("testkit/ is in the repository")
        .to_path_buf()
}

/// `target/<profile>` of the profile this binary was built with.
pub fn profile_dir() -> PathBuf {
    // target/<profile>/deps/<test binary> or target/<profile>/examples/<example>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// The directory holding the `libgrestart.so` built with this binary. Cargo
/// copies it up to `target/<profile>` only for `cargo build`, not for
/// `cargo test`, so use the one in `deps`, which every build refreshes.
pub fn lib_dir() -> PathBuf {
    profile_dir().join("deps")
}

/// A directory removed with everything in it when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new directory, unique to this call (tests run in parallel threads).
    pub fn new(tag: &str) -> TempDir {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let made = MADE.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("grestart-{tag}-{}-{made}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles C (or C++ with `compiler = "c++"`) sources against the header and
/// the library, with warnings as errors. Panics with the compiler's output.
pub fn compile(compiler: &str, sources: &[&Path], output: &Path, extra: &[&str]) {
    let lib = lib_dir();
    let mut cmd = Command::new(compiler);
    cmd.args(["-Wall", "-Wextra", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-I")
        .arg(repo().join("bindings/cpp"))
        .args(extra)
        .args(sources)
        .arg("-o")
        .arg(output)
        .arg("-L")
        .arg(&lib)
        // DT_RPATH, not RUNPATH: cargo test sets LD_LIBRARY_PATH, which would
        // otherwise win and may point at a stale copy in target/<profile>.
        .arg(format!("-Wl,--disable-new-dtags,-rpath,{}", lib.display()))
        .arg("-lgrestart");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} failed for {sources:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the C example reporting `version`, and puts it at `path` by renaming
/// over whatever is there: a running server's binary is replaced the way a
/// package manager replaces it.
pub fn build_c_example(path: &Path, version: u32) {
    build_example("cc", "examples/c/http_server.c", "-std=c99", path, version);
}

/// The prefork C example (a master and its workers) reporting `version`.
pub fn build_prefork_example(path: &Path, version: u32) {
    build_example(
        "cc",
        "examples/c/prefork_server.c",
        "-std=c99",
        path,
        version,
    );
}

/// [`build_c_example`] for the C++ example.
pub fn build_cpp_example(path: &Path, version: u32) {
    build_example(
        "c++",
        "examples/cpp/http_server.cpp",
        "-std=c++17",
        path,
        version,
    );
}

/// [`build_c_example`] for the C++ example on standalone Asio (`libasio-dev`).
pub fn build_asio_example(path: &Path, version: u32) {
    build_example(
        "c++",
        "examples/cpp/asio_server.cpp",
        "-std=c++17",
        path,
        version,
    );
}

/// Builds the Rust example `name` (with cargo `features`) reporting `version`
/// and renames it into `path`; optimised when this binary is (the benchmarks).
///
/// `cargo test` builds examples only as test targets, so the example is built
/// here, in a target directory of its own (the one running this test is
/// cargo's), by the same cargo that runs the tests.
pub fn build_rust_example(name: &str, features: &[&str], path: &Path, version: u32) {
    let features = features.join(",");
    let args = ["--example", name, "--features", &features];
    cargo_build(
        &args,
        "example-under-test",
        &format!("examples/{name}"),
        path,
        version,
    );
}

/// The gRPC example, a crate of its own (`examples/grpc`: tonic and prost,
/// which the core does not depend on), built as [`build_rust_example`] builds
/// the others, in a target directory of its own under `target/`.
pub fn build_grpc_example(path: &Path, version: u32) {
    let args = [
        "--manifest-path",
        "examples/grpc/Cargo.toml",
        "--bin",
        "grpc_server",
    ];
    cargo_build(&args, "grpc-example", "grpc_server", path, version);
}

/// `cargo build ARGS` with `APP_VERSION=version` into `target/TARGET`, and
/// `BUILT` (a path in the profile's directory) renamed into `path`. One build
/// at a time, so that tests building the same example at once copy the
/// version they asked for.
fn cargo_build(args: &[&str], target: &str, built: &str, path: &Path, version: u32) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _building = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let target = repo().join("target").join(target);
    let (profile, flags) = if cfg!(debug_assertions) {
        ("debug", &[][..])
    } else {
        ("release", &["--release"][..])
    };
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .args(flags)
        .env("APP_VERSION", version.to_string())
        .current_dir(repo())
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build {args:?}, version {version}");
    let fresh = path.with_extension("new");
    std::fs::copy(target.join(profile).join(built), &fresh).expect("copy the example");
    std::fs::rename(&fresh, path).expect("rename the example into place");
}

/// The C example built with AddressSanitizer (and LeakSanitizer, which makes
/// a process that leaked exit with a non-zero status).
pub fn build_c_example_with_asan(path: &Path) {
    build_example(
        "cc",
        "examples/c/http_server.c",
        "-fsanitize=address",
        path,
        1,
    );
}

fn build_example(compiler: &str, source: &str, flag: &str, path: &Path, version: u32) {
    let fresh = path.with_extension("new");
    let define = format!("-DAPP_VERSION=\"{version}\"");
    compile(
        compiler,
        &[&repo().join(source)],
        &fresh,
        &[flag, "-pthread", &define],
    );
    std::fs::rename(&fresh, path).expect("rename the new binary into place");
}

/// The virtualenv `scripts/test` prepares, with the frameworks the adapters
/// serve (`scripts/python-venv`).
pub fn python_venv() -> PathBuf {
    repo().join("target/python-venv/bin/python")
}

/// `python examples/python/SCRIPT` on the package in `bindings/python`, with
/// the library this test was built with: no installation needed. The
/// virtualenv's python when there is one (the framework examples need it),
/// else `python3` (enough for the others).
pub fn python_example(script: &str) -> Command {
    python_script(&repo().join("examples/python").join(script))
}

/// [`python_example`] for a script at `path` (a copy that a test replaces
/// with another version).
pub fn python_script(path: &Path) -> Command {
    let venv = python_venv();
    let mut command = Command::new(if venv.exists() {
        venv
    } else {
        "python3".into()
    });
    command
        .arg(path)
        .env("PYTHONPATH", repo().join("bindings/python"))
        .env("GRESTART_LIBRARY", lib_dir().join("libgrestart.so"));
    command
}
