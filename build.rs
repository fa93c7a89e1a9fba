//! Compiles the gRPC contract with no system `protoc`: `protox` parses the proto files
//! in pure Rust, `tonic-prost-build` generates the code, and the encoded descriptor set
//! is kept in OUT_DIR for server reflection.

use std::{env, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tokenauthority/v1/token_authority.proto";
    println!("cargo:rerun-if-changed={proto}");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("token_authority_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, with undecodable requests answered INVALID_ARGUMENT.
        .codec_path("crate::transport::codec::RequestCodec")
        .compile_fds(fds)?;
    Ok(())
}
