//! Compiles `proto/` into Rust (prost messages, tonic client and server) with protox, a
//! protobuf compiler in pure Rust, so building needs no `protoc`. Also writes the encoded
//! file descriptor set, `$OUT_DIR/fracmap_descriptor.bin`, that the reflection service serves.

use std::path::PathBuf;

use protox::prost::Message;

const PROTOS: &[&str] = &["fracmap/v1/fracmap.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    println!("cargo:rerun-if-changed={}", proto_root.join("fracmap").display());

    // Source info keeps the .proto comments: they become doc comments in Rust and the
    // descriptions `grpcurl describe` prints.
    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("fracmap_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
