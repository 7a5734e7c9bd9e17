//! A real systemd, booted as PID 1 of a container that shares our network
//! (`systemd-nspawn -b`, from `systemd-container`), to run the repository's
//! unit files as an operator's machine runs them.
//!
//! The root directory is made of the host itself: `/usr` bound read-only,
//! `bin`, `sbin`, `lib`, `lib64` as symlinks into it (a merged-/usr layout,
//! which systemd expects), a copy of `/etc` without its enabled services (so
//! only what a test installs runs, and no nginx or database is started on
//! the host's network), and empty `dev proc sys run tmp var` for systemd to
//! mount. nspawn makes a PID namespace: pids seen inside (`MainPID`, a
//! server's `X-Pid`) are the container's, and agree with each other.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::build::TempDir;
use crate::process::{children, kill, pidfd, run, wait_exit};

/// How long one command inside the container may take (systemctl's own D-Bus
/// timeout is 25 s; a reload waits for the heir's READY=1).
const COMMAND_TIMEOUT: &str = "90";

pub struct Systemd {
    /// Holds `root/` and nspawn's `console.log`.
    dir: TempDir,
    nspawn: Child,
    /// Our pid of the container's systemd (nspawn's child).
    pub pid: i32,
    pid_exit: OwnedFd,
    /// One booted systemd at a time per test binary: a boot costs seconds of
    /// CPU, and the machine's two cores are shared with the load clients.
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Systemd {
    /// Boots systemd with each of `binds` visible read-only at the same path
    /// (the library in `target/*/deps`, so rpaths resolve), and waits until it
    /// has finished booting.
    pub fn boot(binds: &[&Path]) -> Systemd {
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = TempDir::new("systemd");
        let root = dir.join("root");
        make_root(&root);
        let console = fs::File::create(dir.join("console.log")).expect("console log");
        let mut command = Command::new("systemd-nspawn");
        command
            .arg("-D")
            .arg(&root)
            // Without systemd on the host there is no machined to register
            // with and no unit to make a scope in: stay in our cgroup.
            .args(["--bind-ro=/usr", "--register=no", "--keep-unit"])
            .arg("--console=passive");
        for bind in binds {
            command.arg(format!("--bind-ro={}", bind.display()));
        }
        let nspawn = command
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(console.try_clone().expect("console log"))
            .stderr(console)
            .spawn()
            .expect("systemd-nspawn runs (apt-get install systemd-container)");
        let pid = wait_for_child(nspawn.id() as i32, "systemd", &dir);
        let pid_exit = pidfd(pid).expect("pidfd of the container's systemd");
        let systemd = Systemd {
            dir,
            nspawn,
            pid,
            pid_exit,
            _one_at_a_time: guard,
        };
        systemd.wait_booted();
        systemd
    }

    /// The container's `/` as seen from here: install binaries under it.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Writes `text` as `path` of the container (e.g. a unit file).
    pub fn install(&self, path: &str, text: &str) {
        let file = self.root().join(path.trim_start_matches('/'));
        fs::create_dir_all(file.parent().expect("a file in a directory")).unwrap();
        fs::write(file, text).unwrap();
    }

    /// `args` run inside the container (every namespace of its systemd),
    /// bounded in time.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("timeout");
        command
            .args(["--kill-after=5", COMMAND_TIMEOUT, "nsenter", "-t"])
            .arg(self.pid.to_string())
            .arg("-a")
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `args` inside; what it printed. Panics (with the output) when it fails.
    pub fn run(&self, args: &[&str]) -> String {
        run(&mut self.command(args))
    }

    /// Runs `args` inside, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {args:?} in the container: {e}"))
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    pub fn show(&self, unit: &str, property: &str) -> String {
        let value = self.run(&["systemctl", "show", "-p", property, "--value", unit]);
        value.trim().to_string()
    }

    /// The unit's `MainPID` (a pid of the container), 0 when it has none.
    pub fn main_pid(&self, unit: &str) -> i32 {
        self.show(unit, "MainPID")
            .parse()
            .expect("MainPID is a number")
    }

    /// What the unit's processes wrote (stdout and stderr, through journald).
    pub fn journal(&self, unit: &str) -> String {
        self.run(&["journalctl", "-u", unit, "-o", "cat", "--no-pager"])
    }

    /// The first journal line of `unit` holding `needle`. journald reads a
    /// service's output asynchronously and offers no event to wait for here:
    /// polled, bounded by `timeout`.
    pub fn wait_for_journal(&self, unit: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let journal = self.journal(unit);
            if let Some(line) = journal.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} from {unit} within {timeout:?}:\n{journal}"
            );
            thread::sleep(Duration::from_millis(50)); // polling journald: no event to wait for
        }
    }

    /// `systemctl is-system-running --wait` returns once the boot is over;
    /// before systemd has opened its bus it fails at once, so retry (bounded).
    fn wait_booted(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.output(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match state.as_str() {
                "running" => return,
                "degraded" => panic!(
                    "the container booted degraded:\n{}",
                    self.run(&["systemctl", "--failed", "--no-pager"])
                ),
                _ => {}
            }
            assert!(
                Instant::now() < deadline && !wait_exit(&self.pid_exit, Duration::ZERO),
                "systemd did not boot ({state:?}, {}):\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.console()
            );
            thread::sleep(Duration::from_millis(100)); // its bus is not there yet: nothing to wait on
        }
    }

    /// What the container's console (systemd, nspawn) printed.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // poweroff stops every unit (draining servers), then systemd exits
        // and nspawn with it; --no-block: the command's own connection dies
        // with systemd.
        let _ = self.output(&["systemctl", "poweroff", "--no-block"]);
        if !wait_exit(&self.pid_exit, Duration::from_secs(60)) {
            eprintln!("the container's systemd ignored poweroff: killing it");
            // SIGKILL to a PID namespace's init ends every process in it.
            kill(self.pid, libc::SIGKILL);
        }
        if !wait_exit(&self.pid_exit, Duration::from_secs(10)) {
            let _ = self.nspawn.kill();
        }
        let _ = self.nspawn.wait();
    }
}

/// Lays out the root directory described at the top of this file.
fn make_root(root: &Path) {
    fs::create_dir_all(root.join("usr")).unwrap();
    for dir in ["bin", "sbin", "lib", "lib64"] {
        symlink(format!("usr/{dir}"), root.join(dir)).unwrap();
    }
    for dir in ["dev", "proc", "sys", "run", "tmp", "var"] {
        fs::create_dir(root.join(dir)).unwrap();
    }
    run(Command::new("cp")
        .arg("-a")
        .arg("/etc")
        .arg(root.join("etc")));
    let etc = root.join("etc");
    // nspawn accepts a directory as an OS tree by its os-release; the host's
    // is a symlink into /usr/lib, which is only bound once nspawn runs: a
    // real file needs nothing else in place.
    let _ = fs::remove_file(etc.join("os-release"));
    fs::copy("/usr/lib/os-release", etc.join("os-release")).unwrap();
    // A machine id of its own: with the host's, nspawn warns "Host and
    // machine ids are equal" on every boot, and the journals would mix.
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
    fs::write(
        etc.join("machine-id"),
        format!("{}\n", uuid.trim().replace('-', "")),
    )
    .unwrap();
    // The host's enabled services: systemd's (*.wants, *.requires) and the
    // SysV links the sysv generator would turn into units (nginx, postgresql).
    for entry in fs::read_dir(etc.join("systemd/system")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".wants") || name.ends_with(".requires") {
            fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    for entry in fs::read_dir(&etc).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("rc") && name.ends_with(".d") && entry.path().is_dir() {
            for link in fs::read_dir(entry.path()).unwrap().flatten() {
                let _ = fs::remove_file(link.path());
            }
        }
    }
}

/// The pid of the child of `parent` once it runs `comm` (nspawn forks, then
/// the child execs systemd). Nothing signals the exec: polled, bounded.
fn wait_for_child(parent: i32, comm: &str, dir: &TempDir) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = children(parent, false).into_iter().find(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            Instant::now() < deadline && Path::new(&format!("/proc/{parent}")).exists(),
            "systemd-nspawn started no {comm}:\n{}",
            fs::read_to_string(dir.join("console.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20)); // polling /proc: no event for an exec
    }
}
