//! Generates the gRPC service from `echo.proto` with the `protoc` that the
//! `protoc-bin-vendored` crate ships: building the example needs nothing but
//! cargo, on a developer's machine and on CI alike.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(false)
        .compile_with_config(config, &["echo.proto"], &["."])?;
    Ok(())
}
