//! Compiles `proto/tc.proto` without a system `protoc`: protox parses it in
//! pure Rust and tonic-prost-build generates the messages and the service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tc.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // `bytes` fields decode as `bytes::Bytes`: a transaction goes from
        // the socket to the WAL and to pushes without a copy.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
