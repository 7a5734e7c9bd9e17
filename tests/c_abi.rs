//! The C ABI from a C program: bad input gets -1, errno and a message, never
//! a crash; hooks, signals and the lifecycle behave as the header says.

use std::process::Command;

/// Builds tests/c/abi_test.c with `flags`, runs it, and returns its exit
/// status with what it printed on stdout and stderr.
fn run_abi_test(tag: &str, flags: &[&str]) -> (std::process::ExitStatus, String, String) {
    let dir = testkit::TempDir::new(tag);
    let binary = dir.join("abi_test");
    let source = testkit::repo().join("tests/c/abi_test.c");
    testkit::compile("cc", &[&source], &binary, flags);
    let out = Command::new(&binary).output().expect("run abi_test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}{stderr}");
    (out.status, stdout, stderr)
}

#[test]
fn c_program_sees_clear_errors() {
    let (status, stdout, stderr) = run_abi_test("abi", &["-std=c99"]);
    assert!(
        status.success(),
        "abi_test failed ({status}):\n{stdout}{stderr}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn c_program_is_clean_under_address_sanitizer() {
    let (status, _, stderr) = run_abi_test("abi-asan", &["-std=c99", "-fsanitize=address"]);
    assert!(
        status.success(),
        "abi_test under ASan ({status}):\n{stderr}"
    );
    assert!(!stderr.contains("Sanitizer"), "{stderr}");
}

#[test]
fn c_example_restarts_clean_under_address_sanitizer() {
    let dir = testkit::TempDir::new("server-asan");
    let binary = dir.join("http_server");
    testkit::build_c_example_with_asan(&binary);
    testkit::become_subreaper();
    let mut server =
        testkit::Server::start(&binary, &[], "127.0.0.1:0", &[("GRESTART_LOG", "warn")]);
    let load = testkit::Load::start(server.addr, 2, 2);
    for _ in 0..5 {
        let restart = server.restart(libc::SIGUSR2);
        // LeakSanitizer or AddressSanitizer findings make the exit status non-zero.
        assert_eq!(
            restart.old_status,
            Some(0),
            "a drained generation exits cleanly"
        );
    }
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.failures);
    server.stop();
}
