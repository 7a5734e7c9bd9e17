//! The committed C header is exactly what cbindgen generates from `src/ffi/`,
//! and it compiles on its own as C and as C++ with every warning an error.
//! Refresh it with `GRESTART_BLESS=1 cargo test --test header`.

use std::path::Path;

const FRESH: &str = include_str!(concat!(env!("OUT_DIR"), "/grestart.h"));

#[test]
fn committed_header_is_fresh() {
    let committed_path = testkit::repo().join("include/grestart.h");
    if std::env::var_os("GRESTART_BLESS").is_some() {
        std::fs::write(&committed_path, FRESH).expect("write include/grestart.h");
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == FRESH,
        "include/grestart.h is stale: run `GRESTART_BLESS=1 cargo test --test header` and commit it"
    );
}

#[test]
fn header_compiles_alone_as_c_and_cpp() {
    let dir = testkit::TempDir::new("header");
    for (compiler, standard, file) in [
        ("cc", "-std=c99", "alone.c"),
        ("cc", "-std=c11", "alone11.c"),
        ("c++", "-std=c++11", "alone.cpp"),
    ] {
        let source = dir.join(file);
        std::fs::write(&source, "#include \"grestart.h\"\n#include \"grestart.h\"\nint main(void) { return gr_version()[0] == 0; }\n")
            .unwrap();
        let flags = [standard, "-pedantic"];
        testkit::compile(compiler, &[Path::new(&source)], &dir.join("alone"), &flags);
    }
}

#[test]
fn version_macros_match_cargo_toml() {
    let version = env!("CARGO_PKG_VERSION");
    assert!(FRESH.contains(&format!("#define GR_VERSION \"{version}\"")));
    assert!(FRESH.contains(&format!(
        "#define GR_VERSION_MAJOR {}",
        env!("CARGO_PKG_VERSION_MAJOR")
    )));
    assert_eq!(grestart::VERSION, version);
}
