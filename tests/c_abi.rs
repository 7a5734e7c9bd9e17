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
