use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/keywarden/v1/datakey.proto",
        "proto/keywarden/v1/keys.proto",
        "proto/keywarden/v1/operator.proto",
    ];
    tonic_prost_build::configure()
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::Codec")
        .file_descriptor_set_path(out.join("keywarden_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
