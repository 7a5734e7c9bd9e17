//! The crate as crates.io would ship it: `cargo package` makes it, it holds
//! what a Rust user needs and nothing of the tests or the other languages,
//! and the README's Rust quick start builds from it in a scratch project,
//! offline, and restarts under load.

use std::path::Path;
use std::process::Command;

use testkit::TempDir;

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

#[test]
fn the_packaged_crate_runs_the_readme_quick_start_offline() {
    let dir = TempDir::new("package");
    let target = testkit::repo().join("target/package-test");
    testkit::run(
        cargo()
            .args([
                "package",
                "--no-verify",
                "--allow-dirty",
                "--offline",
                "--quiet",
            ])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(testkit::repo()),
    );
    let name = format!("grestart-{}", env!("CARGO_PKG_VERSION"));
    let crate_file = target.join("package").join(format!("{name}.crate"));
    testkit::run(
        Command::new("tar")
            .arg("-xzf")
            .arg(&crate_file)
            .arg("-C")
            .arg(&dir.0),
    );
    let unpacked = dir.join(&name);

    let listing = testkit::run(Command::new("tar").arg("-tzf").arg(&crate_file));
    for needed in [
        "src/lib.rs",
        "src/ffi/mod.rs",
        "build.rs",
        "include/grestart.h",
        "README.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
    ] {
        assert!(
            unpacked.join(needed).exists(),
            "{needed} missing from the package:\n{listing}"
        );
    }
    // The top-level folders only: `src/engine/tests/` are unit tests of the crate.
    for foreign in [
        "tests/",
        "benches/",
        "bindings/",
        "target/",
        "scripts/",
        "testkit/",
    ] {
        assert!(
            !listing
                .lines()
                .any(|l| l.starts_with(&format!("{name}/{foreign}"))),
            "the package holds {foreign}:\n{listing}"
        );
    }
    assert!(
        !listing.lines().any(|l| l.ends_with(".so")),
        "the package holds a shared library:\n{listing}"
    );

    // A user's project: the README's quick start as its main, the crate as
    // unpacked from the .crate file, nothing from the network.
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(scratch.join("src")).unwrap();
    std::fs::write(
        scratch.join("Cargo.toml"),
        format!(
            "[package]\nname = \"scratch\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\ngrestart = {{ path = {:?} }}\n",
            unpacked.display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(
        testkit::repo().join("examples/quickstart.rs"),
        scratch.join("src/main.rs"),
    )
    .unwrap();
    let scratch_target = testkit::repo().join("target/package-scratch");
    testkit::run(
        cargo()
            .args(["build", "--offline", "--quiet", "--target-dir"])
            .arg(&scratch_target)
            .current_dir(&scratch)
            .env_remove("RUSTFLAGS"),
    );
    let binary = scratch_target.join("debug/scratch");
    assert!(Path::new(&binary).exists());

    let mut command = Command::new(&binary);
    command.arg("127.0.0.1:0").env("GRESTART_LOG", "warn");
    testkit::restarts_of(command, 3, None::<fn()>);
}
