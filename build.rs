//! Compiles `proto/` into Rust with a pure-Rust protobuf compiler (protox), so
//! building benchq never needs `protoc`. The encoded descriptor set is kept in
//! `OUT_DIR` for the coordinator's gRPC reflection service.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/benchq/v1/coordinator.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("benchq_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
