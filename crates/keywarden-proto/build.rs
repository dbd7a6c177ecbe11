//! Compiles `proto/keywarden/v1/*.proto` with protox (a protobuf compiler
//! in Rust), so neither the daemon nor a client application needs `protoc`.

use std::path::PathBuf;

use prost::Message;

const PROTOS: [&str; 4] = [
    "proto/keywarden/v1/datakey.proto",
    "proto/keywarden/v1/keys.proto",
    "proto/keywarden/v1/mac.proto",
    "proto/keywarden/v1/operator.proto",
];

/// Messages that carry a plaintext data key, a PIN, a share, or plaintext
/// or values from an application: no `Debug`,
/// so no `{:?}` can print one. (A message holding one of them, and the
/// `oneof` inside it, must go without `Debug` too.)
const SECRET_BEARING: [&str; 19] = [
    // Plaintext to encrypt, and values (a medical record number) to MAC.
    "keywarden.v1.EncryptRequest",
    "keywarden.v1.BatchEncryptRequest",
    "keywarden.v1.GenerateMacRequest",
    "keywarden.v1.VerifyMacRequest",
    "keywarden.v1.BatchGenerateMacRequest",
    "keywarden.v1.GenerateDataKeyResponse",
    "keywarden.v1.DecryptResponse",
    "keywarden.v1.BatchGenerateDataKeyResult",
    "keywarden.v1.BatchGenerateDataKeyResult.result",
    "keywarden.v1.BatchGenerateDataKeyResponse",
    "keywarden.v1.BatchDecryptResult",
    "keywarden.v1.BatchDecryptResult.result",
    "keywarden.v1.BatchDecryptResponse",
    "keywarden.v1.IssuedShare",
    "keywarden.v1.InitRequest",
    "keywarden.v1.InitResponse",
    "keywarden.v1.UnsealRequest",
    "keywarden.v1.RekeyShareRequest",
    "keywarden.v1.RekeySubmitResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out.join("keywarden_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Malformed requests are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::Codec")
        .skip_debug(SECRET_BEARING)
        .compile_fds(fds)?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
