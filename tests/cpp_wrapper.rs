//! The header-only C++ wrapper: compiles alone and from two translation units
//! with every warning an error, and behaves as documented.

use std::process::Command;

#[test]
fn wrapper_from_two_translation_units() {
    let dir = testkit::TempDir::new("cpp");
    let binary = dir.join("wrapper");
    let tests = testkit::repo().join("tests/cpp");
    testkit::compile(
        "c++",
        &[&tests.join("wrapper_a.cpp"), &tests.join("wrapper_b.cpp")],
        &binary,
        &["-std=c++17", "-pthread"],
    );
    let out = Command::new(&binary)
        .output()
        .expect("run the wrapper test");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    println!("{stdout}{stderr}");
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("a hook that throws"),
        "the hook's exception is reported: {stderr}"
    );
}

#[test]
fn wrapper_header_compiles_alone() {
    let dir = testkit::TempDir::new("cpp-alone");
    let source = dir.join("alone.cpp");
    std::fs::write(&source, "#include \"grestart.hpp\"\n#include \"grestart.hpp\"\nint main() { return grestart::version().empty(); }\n").unwrap();
    testkit::compile(
        "c++",
        &[&source],
        &dir.join("alone"),
        &["-std=c++17", "-pedantic"],
    );
}
