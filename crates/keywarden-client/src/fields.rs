//! Small fields encrypted by the daemon (`Encrypt`, at most 4096 bytes, a
//! format-2 blob that `Decrypt` opens) and MACs under `hmac` keys
//! (`GenerateMac`, `VerifyMac`), for blind indexes and integrity tags.

use keywarden_proto as proto;
use zeroize::Zeroizing;

use crate::client::{proto_context, Client};
use crate::error::Error;
use crate::format::Context;

/// A MAC and the key version that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mac {
    /// HMAC-SHA256, 32 bytes.
    pub mac: [u8; 32],
    /// The key's name.
    pub key: String,
    /// The version that made it (name it again to get the same MAC after
    /// a rotation).
    pub key_version: u32,
}

impl Client {
    /// Encrypts up to 4096 bytes in the HSM under `key` (an `aes` key),
    /// bound to `ctx`; returns the blob, which [`Client::decrypt_field`]
    /// opens. Not retried (each call counts an encryption).
    pub async fn encrypt_field(
        &self,
        key: &str,
        plaintext: &[u8],
        ctx: &Context,
    ) -> Result<Vec<u8>, Error> {
        let req = proto::EncryptRequest {
            key: key.to_string(),
            plaintext: plaintext.to_vec(),
            encryption_context: proto_context(ctx),
        };
        let mut c = self.datakeys.clone();
        Ok(c.encrypt(req).await?.into_inner().ciphertext_blob)
    }

    /// Opens what [`Client::encrypt_field`] made, under the same context.
    pub async fn decrypt_field(
        &self,
        blob: &[u8],
        ctx: &Context,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let mut r = self.decrypt_raw(blob, ctx).await?;
        Ok(Zeroizing::new(std::mem::take(&mut r.plaintext)))
    }

    /// HMAC-SHA256 of up to 4096 bytes under `key` (an `hmac` key): its
    /// newest version, or `version`.
    pub async fn mac(&self, key: &str, data: &[u8], version: Option<u32>) -> Result<Mac, Error> {
        let req = proto::GenerateMacRequest {
            key: key.to_string(),
            data: data.to_vec(),
            key_version: version.unwrap_or(0),
        };
        let r = self
            .retrying(|| {
                let mut c = self.macs.clone();
                let req = req.clone();
                async move { c.generate_mac(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        let mac = <[u8; 32]>::try_from(r.mac.as_slice()).map_err(|_| Error::Usage {
            field: "mac",
            reason: format!("the daemon answered {} bytes, not 32", r.mac.len()),
        })?;
        Ok(Mac {
            mac,
            key: r.key,
            key_version: r.key_version,
        })
    }

    /// Whether `mac` is the MAC of `data` under `key` (its newest version,
    /// or `version`), compared in constant time by the daemon.
    pub async fn verify_mac(
        &self,
        key: &str,
        data: &[u8],
        mac: &[u8],
        version: Option<u32>,
    ) -> Result<bool, Error> {
        let req = proto::VerifyMacRequest {
            key: key.to_string(),
            data: data.to_vec(),
            mac: mac.to_vec(),
            key_version: version.unwrap_or(0),
        };
        let r = self
            .retrying(|| {
                let mut c = self.macs.clone();
                let req = req.clone();
                async move { c.verify_mac(req).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(r.valid)
    }
}
