//! The C ABI from a C program: bad input gets -1, errno and a message, never
//! a crash; hooks, signals and the lifecycle behave as the header says.

mod support;

use std::process::Command;

#[test]
fn c_program_sees_clear_errors() {
    let dir = support::TempDir::new("abi");
    let binary = dir.join("abi_test");
    support::compile(
        "cc",
        &[&support::repo().join("tests/c/abi_test.c")],
        &binary,
        &["-std=c99"],
    );
    let out = Command::new(&binary).output().expect("run abi_test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "abi_test failed ({}):\n{stdout}{stderr}",
        out.status
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn c_program_is_clean_under_address_sanitizer() {
    let dir = support::TempDir::new("abi-asan");
    let binary = dir.join("abi_test");
    support::compile(
        "cc",
        &[&support::repo().join("tests/c/abi_test.c")],
        &binary,
        &["-std=c99", "-fsanitize=address"],
    );
    let out = Command::new(&binary).output().expect("run abi_test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "abi_test under ASan ({}):\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("Sanitizer"), "{stderr}");
}

#[test]
fn c_example_restarts_clean_under_address_sanitizer() {
    let dir = support::TempDir::new("server-asan");
    let binary = dir.join("http_server");
    support::build_c_example_with_asan(&binary);
    support::become_subreaper();
    let mut server =
        support::Server::start(&binary, &[], "127.0.0.1:0", &[("GRESTART_LOG", "warn")]);
    let load = support::Load::start(server.addr, 2, 2);
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
