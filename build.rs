//! Generates the gRPC types from `proto/` with tonic-prost-build (needs `protoc`; `scripts/deps`
//! installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        // Clients dial with hyper (src/h2.rs), not tonic's Channel.
        .build_transport(false)
        // Hold a secret value: their Debug is written by hand, redacted (src/wire/proto.rs).
        .skip_debug([
            "moby.buildkit.secrets.v1.GetSecretResponse",
            "moby.filesync.v1.CredentialsResponse",
        ])
        .compile_protos(
            &[
                "proto/secrets.proto",
                "proto/control.proto",
                "proto/auth.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
