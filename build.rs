//! Generates the gRPC types from `proto/` with tonic's builder (needs `protoc`; `scripts/deps`
//! installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_build::configure()
        .compile_protos(&["proto/secrets.proto", "proto/control.proto"], &["proto"])?;
    Ok(())
}
