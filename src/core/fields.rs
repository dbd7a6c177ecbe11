//! Small fields: Encrypt (a payload of at most 4096 bytes sealed by the
//! HSM under an aes key, a format-2 blob) and MACs under hmac keys
//! (GenerateMac, VerifyMac), for clients with no cryptography of their own
//! and for blind indexes.

use subtle::ConstantTimeEq;

use super::batch;
use super::*;
use crate::hsm::{KeyKind, MAC_LEN};

impl super::DataPath<'_> {
    /// Encrypt for one or many requests; each item succeeds or fails on its
    /// own. Counts against the version's encryption limit like a data key.
    pub fn encrypt(
        &self,
        requests: Vec<EncryptRequest>,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<Encrypted>>> {
        self.unsealed()?;
        struct Prepared {
            key: Arc<KeyRecord>,
            version: u32,
            hsm_id: HsmKeyId,
            aad: Vec<u8>,
            plaintext: zeroize::Zeroizing<Vec<u8>>,
        }
        let mut metas = Vec::with_capacity(requests.len());
        let mut prepared: Vec<CoreResult<Prepared>> = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = batch::Meta::default();
            let p = (|| {
                validate::key_name("key", &req.key)?;
                meta.key = Some(req.key.clone());
                validate::payload("plaintext", req.plaintext.len())?;
                let ctx = validate::context(req.context)?;
                meta.break_glass = gate(&req.key, &ctx).map_err(CoreError::PermissionDenied)?;
                let key = self.usable_of_kind("key", &req.key, "Encrypt", KeyKind::Aes)?;
                let v = key.current().ok_or_else(|| CoreError::KeyUnusable {
                    name: key.name.clone(),
                    state: "without an active version".into(),
                    operation: "Encrypt",
                })?;
                let (version, hsm_id) = (v.version, v.hsm_id);
                meta.version = Some(version);
                let header = blob::header_of(blob::FORMAT_V2, &key.id, version);
                let aad = blob::aad(&header, &blob::canonical_context(&ctx));
                Ok(Prepared {
                    key,
                    version,
                    hsm_id,
                    aad,
                    plaintext: req.plaintext,
                })
            })();
            metas.push(meta);
            prepared.push(p);
        }
        // One HSM call per CMK version in the batch, counted first.
        let results = batch::per_version(
            &prepared,
            |p| p.hsm_id,
            |hsm_id, group| {
                let Some(first) = group.first() else {
                    return Ok(Vec::new());
                };
                self.count_encryptions(&first.key, first.version, hsm_id, group.len() as u64)?;
                let items: Vec<(&[u8], &[u8])> = group
                    .iter()
                    .map(|p| (p.aad.as_slice(), p.plaintext.as_slice()))
                    .collect();
                let sealed = self
                    .hsm
                    .encrypt_many(&hsm_id, &items)
                    .map_err(CoreError::from_hsm)?;
                Ok(group
                    .iter()
                    .zip(sealed)
                    .map(|(p, (iv, ct))| Encrypted {
                        key: p.key.name.clone(),
                        key_id: p.key.id_text(),
                        key_version: p.version,
                        blob: Blob {
                            format: blob::FORMAT_V2,
                            key_id: p.key.id,
                            key_version: p.version,
                            iv,
                            ciphertext: ct,
                        }
                        .encode(),
                    })
                    .collect())
            },
        );
        Ok(self.recheck(batch::collect(prepared, results, metas), "Encrypt"))
    }

    /// GenerateMac (and VerifyMac, for requests that carry `mac`) for one
    /// or many requests; each item succeeds or fails on its own. A request
    /// that names a version gets that version, if it is still usable
    /// (neither revoked, destroyed nor retired): a blind index keeps the
    /// version it was built with until it is rebuilt.
    pub fn macs(
        &self,
        requests: Vec<MacRequest>,
        gate: MacGate<'_>,
        operation: &'static str,
    ) -> CoreResult<Vec<Item<MacOutput>>> {
        self.unsealed()?;
        struct Prepared {
            key: Arc<KeyRecord>,
            version: u32,
            hsm_id: HsmKeyId,
            data: zeroize::Zeroizing<Vec<u8>>,
            mac: Option<Vec<u8>>,
        }
        let mut metas = Vec::with_capacity(requests.len());
        let mut prepared: Vec<CoreResult<Prepared>> = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = batch::Meta::default();
            let p = (|| {
                validate::key_name("key", &req.key)?;
                meta.key = Some(req.key.clone());
                validate::payload("data", req.data.len())?;
                if let Some(m) = &req.mac {
                    if m.len() != MAC_LEN {
                        return Err(CoreError::invalid(
                            "mac",
                            format!("is {} bytes; an HMAC-SHA256 is {MAC_LEN}", m.len()),
                        ));
                    }
                }
                meta.break_glass = gate(&req.key).map_err(CoreError::PermissionDenied)?;
                let key = self.usable_of_kind("key", &req.key, operation, KeyKind::Hmac)?;
                let (version, hsm_id) = match req.version {
                    Some(v) => (v, Self::mac_version(&key, v)?),
                    None => {
                        let v = key.current().ok_or_else(|| CoreError::KeyUnusable {
                            name: key.name.clone(),
                            state: "without an active version".into(),
                            operation,
                        })?;
                        (v.version, v.hsm_id)
                    }
                };
                meta.version = Some(version);
                Ok(Prepared {
                    key,
                    version,
                    hsm_id,
                    data: req.data,
                    mac: req.mac,
                })
            })();
            metas.push(meta);
            prepared.push(p);
        }
        let results = batch::per_version(
            &prepared,
            |p| p.hsm_id,
            |hsm_id, group| {
                let inputs: Vec<&[u8]> = group.iter().map(|p| p.data.as_slice()).collect();
                let macs = self.hsm.mac_many(&hsm_id, &inputs).map_err(|e| {
                    warn!(id = %hsm_id, error = %e, "MAC failed");
                    CoreError::from_hsm(e)
                })?;
                Ok(group
                    .iter()
                    .zip(macs)
                    .map(|(p, mac)| MacOutput {
                        key: p.key.name.clone(),
                        key_id: p.key.id_text(),
                        key_version: p.version,
                        mac,
                        // Verification compares in constant time.
                        valid: p
                            .mac
                            .as_ref()
                            .is_some_and(|want| bool::from(mac.ct_eq(want.as_slice()))),
                    })
                    .collect())
            },
        );
        Ok(self.recheck(batch::collect(prepared, results, metas), operation))
    }

    /// The HSM object of an explicitly named MAC version, if it may still
    /// be used.
    fn mac_version(k: &KeyRecord, version: u32) -> CoreResult<HsmKeyId> {
        let v = k.version(version).ok_or_else(|| {
            CoreError::invalid(
                "key_version",
                format!("key {:?} has no version {version}", k.name),
            )
        })?;
        match v.state {
            VersionState::Compromised | VersionState::Destroyed => Err(CoreError::VersionRevoked {
                name: k.name.clone(),
                version,
                state: v.state.as_str(),
            }),
            _ if version < k.min_decrypt_version => Err(CoreError::VersionRetired {
                name: k.name.clone(),
                version,
                min: k.min_decrypt_version,
            }),
            _ => Ok(v.hsm_id),
        }
    }
}
