//! Generates the gRPC client from the authority's own proto file (no server code), with no
//! system `protoc`: `protox` parses it in pure Rust, as the server's build does.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/tokenauthority/v1/token_authority.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
