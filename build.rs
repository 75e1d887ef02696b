//! Generates the gRPC types from `proto/` with tonic's builder (needs `protoc`; `scripts/deps`
//! installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_build::configure()
        // Holds a secret value: its Debug is written by hand, redacted (src/proto.rs).
        .skip_debug("moby.buildkit.secrets.v1.GetSecretResponse")
        .compile_protos(&["proto/secrets.proto", "proto/control.proto"], &["proto"])?;
    Ok(())
}
