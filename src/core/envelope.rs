//! The data path: data keys generated, unwrapped and rewrapped under a
//! key's versions, with the per-version encryption counters.

use super::*;
use crate::hsm::KeyKind;
use crate::sync::Recover;

/// What a blob of `format` opened to: a 32-byte data key, or a payload.
pub(super) fn opened(format: u8, pt: zeroize::Zeroizing<Vec<u8>>) -> CoreResult<Plaintext> {
    if format == blob::FORMAT_V1 {
        DataKey::from_slice(&pt)
            .map(Plaintext::DataKey)
            .ok_or_else(|| CoreError::Internal(format!("unwrapped key is {} bytes", pt.len())))
    } else {
        Ok(Plaintext::Payload(pt))
    }
}

/// A blob ready to unwrap: its key's record, the parsed blob, the AAD
/// it was sealed with, and the CMK version's object.
pub(super) struct Unwrap {
    key: Arc<KeyRecord>,
    blob: Blob,
    aad: Vec<u8>,
    hsm_id: HsmKeyId,
}

impl super::DataPath<'_> {
    pub(super) fn usable_key(
        &self,
        name: &str,
        operation: &'static str,
    ) -> CoreResult<Arc<KeyRecord>> {
        let k = self.records().record(name)?;
        match k.state {
            KeyState::Active => Ok(k),
            KeyState::Destroyed => Err(CoreError::KeyDestroyed {
                name: k.name.clone(),
                at: k.destroyed_at.unwrap_or(0),
            }),
            other => Err(CoreError::KeyUnusable {
                name: k.name.clone(),
                state: other.as_str().to_string(),
                operation,
            }),
        }
    }
    /// As [`usable_key`](Self::usable_key), and of the kind `operation`
    /// needs; `field` is the request field that named it.
    pub(super) fn usable_of_kind(
        &self,
        field: &'static str,
        name: &str,
        operation: &'static str,
        needs: crate::hsm::KeyKind,
    ) -> CoreResult<Arc<KeyRecord>> {
        let k = self.usable_key(name, operation)?;
        Self::check_kind(field, &k, operation, needs)?;
        Ok(k)
    }
    pub(super) fn check_kind(
        field: &'static str,
        k: &KeyRecord,
        operation: &'static str,
        needs: crate::hsm::KeyKind,
    ) -> CoreResult<()> {
        if k.kind != needs {
            return Err(CoreError::WrongKind {
                field,
                name: k.name.clone(),
                kind: k.kind.as_str(),
                needs: needs.as_str(),
                operation,
            });
        }
        Ok(())
    }
    /// After the HSM call: the daemon must still be open and the key and
    /// version still usable. A disable, a revocation, a destruction or a
    /// seal that took effect while the call ran wins: nothing is served
    /// from a state that no longer holds once the change has returned.
    pub(super) fn still_usable(
        &self,
        name: &str,
        version: u32,
        operation: &'static str,
    ) -> CoreResult<()> {
        self.unsealed()?;
        let k = self.usable_key(name, operation)?;
        Self::decryptable(&k, version).map(|_| ())
    }
    /// [`still_usable`](Self::still_usable) for every item that succeeded.
    pub(super) fn recheck<T>(&self, items: Vec<Item<T>>, operation: &'static str) -> Vec<Item<T>> {
        items
            .into_iter()
            .map(|mut item| {
                if let (Ok(_), Some(key), Some(version)) = (&item.result, &item.key, item.version) {
                    if let Err(e) = self.still_usable(key, version, operation) {
                        item.result = Err(e);
                    }
                }
                item
            })
            .collect()
    }
    /// The version a blob names, if it may decrypt.
    pub(super) fn decryptable(k: &KeyRecord, version: u32) -> CoreResult<HsmKeyId> {
        let v = k
            .version(version)
            .ok_or_else(|| CoreError::BlobVersionUnknown {
                name: k.name.clone(),
                version,
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
    /// GenerateDataKey for one or many requests; each item succeeds or fails
    /// on its own. The outer error refuses the whole call (sealed).
    pub fn generate_data_keys(
        &self,
        requests: Vec<GenerateRequest>,
        with_plaintext: bool,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<GeneratedKey>>> {
        self.unsealed()?;
        struct Prepared {
            key: Arc<KeyRecord>,
            version: u32,
            hsm_id: HsmKeyId,
            aad: Vec<u8>,
        }
        let mut metas: Vec<batch::Meta> = Vec::with_capacity(requests.len());
        let mut prepared: Vec<CoreResult<Prepared>> = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = batch::Meta::default();
            let p = (|| {
                validate::key_name("key", &req.key)?;
                meta.key = Some(req.key.clone());
                let ctx = validate::context(req.context)?;
                meta.break_glass = gate(&req.key, &ctx).map_err(CoreError::PermissionDenied)?;
                let key = self.usable_of_kind("key", &req.key, "GenerateDataKey", KeyKind::Aes)?;
                let v = key.current().ok_or_else(|| CoreError::KeyUnusable {
                    name: key.name.clone(),
                    state: "without an active version".into(),
                    operation: "GenerateDataKey",
                })?;
                let (version, hsm_id) = (v.version, v.hsm_id);
                meta.version = Some(version);
                let header = blob::header(&key.id, version);
                let aad = blob::aad(&header, &blob::canonical_context(&ctx));
                Ok(Prepared {
                    key,
                    version,
                    hsm_id,
                    aad,
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
                let aads: Vec<&[u8]> = group.iter().map(|p| p.aad.as_slice()).collect();
                let wrapped = self.hsm.wrap_new_keys(&hsm_id, &aads).map_err(|e| {
                    warn!(id = %hsm_id, error = %e, "wrap failed");
                    CoreError::from_hsm(e)
                })?;
                Ok(group
                    .iter()
                    .zip(wrapped)
                    .map(|(p, w)| GeneratedKey {
                        key: p.key.name.clone(),
                        key_id: p.key.id_text(),
                        key_version: p.version,
                        plaintext: with_plaintext.then_some(w.plaintext),
                        blob: Blob {
                            format: blob::FORMAT_V1,
                            key_id: p.key.id,
                            key_version: p.version,
                            iv: w.iv,
                            ciphertext: w.ciphertext,
                        }
                        .encode(),
                    })
                    .collect())
            },
        );
        let items = batch::collect(prepared, results, metas);
        Ok(self.recheck(items, "GenerateDataKey"))
    }
    /// Parses, looks up and authorizes one blob for decryption.
    pub(super) fn prepare_unwrap(
        &self,
        blob_bytes: &[u8],
        context: HashMap<String, String>,
        expected_key: Option<&str>,
        gate: Gate<'_>,
        meta: &mut batch::Meta,
    ) -> CoreResult<Unwrap> {
        validate::blob_size(blob_bytes.len())?;
        if let Some(k) = expected_key {
            validate::key_name("key", k)?;
        }
        let ctx = validate::context(context)?;
        let blob = Blob::decode(blob_bytes)?;
        let key = self.records().record_by_id(&blob.key_id)?;
        meta.key = Some(key.name.clone());
        meta.version = Some(blob.key_version);
        meta.break_glass = gate(&key.name, &ctx).map_err(CoreError::PermissionDenied)?;
        // After the policy: a caller it refuses learns nothing of the kind.
        Self::check_kind("ciphertext_blob", &key, "Decrypt", KeyKind::Aes)?;
        if let Some(expected) = expected_key {
            if expected != key.name {
                return Err(CoreError::KeyMismatch {
                    expected: expected.to_string(),
                    actual: key.name.clone(),
                });
            }
        }
        let key = self.usable_key(&key.name, "Decrypt")?;
        let hsm_id = Self::decryptable(&key, blob.key_version)?;
        let aad = blob::aad(&blob.header(), &blob::canonical_context(&ctx));
        Ok(Unwrap {
            key,
            blob,
            aad,
            hsm_id,
        })
    }
    /// Decrypt for one or many requests; each item succeeds or fails on its
    /// own.
    pub fn decrypt(
        &self,
        requests: Vec<DecryptRequest>,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<Decrypted>>> {
        self.unsealed()?;
        let mut metas = Vec::with_capacity(requests.len());
        let mut prepared = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = batch::Meta::default();
            let p =
                self.prepare_unwrap(&req.blob, req.context, req.key.as_deref(), gate, &mut meta);
            metas.push(meta);
            prepared.push(p);
        }
        let items: Vec<UnwrapItem<'_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .map(|u| UnwrapItem {
                key: u.hsm_id,
                iv: u.blob.iv,
                aad: &u.aad,
                ciphertext: &u.blob.ciphertext,
            })
            .collect();
        let mut unwrapped = if items.is_empty() {
            Vec::new()
        } else {
            self.hsm.decrypt_many(&items)
        }
        .into_iter();
        drop(items);
        let items = prepared
            .into_iter()
            .zip(metas)
            .map(|(p, m)| Item {
                key: m.key,
                version: m.version,
                break_glass: m.break_glass,
                result: (|| {
                    let Unwrap { key: k, blob, .. } = p?;
                    let pt = unwrapped
                        .next()
                        .ok_or_else(|| CoreError::Internal("HSM returned too few results".into()))?
                        .map_err(CoreError::from_hsm)?;
                    Ok(Decrypted {
                        key_id: k.id_text(),
                        key: k.name.clone(),
                        key_version: blob.key_version,
                        plaintext: opened(blob.format, pt)?,
                    })
                })(),
            })
            .collect();
        Ok(self.recheck(items, "Decrypt"))
    }
    /// ReEncrypt: unwrap inside the daemon, wrap again under the newest
    /// version of the destination key. The plaintext never leaves.
    pub fn reencrypt(
        &self,
        requests: Vec<ReEncryptRequest>,
        gate: Gate<'_>,
    ) -> CoreResult<Vec<Item<ReEncrypted>>> {
        self.unsealed()?;
        let mut out = Vec::with_capacity(requests.len());
        for req in requests {
            let mut meta = batch::Meta::default();
            let result = (|| {
                let src_ctx_copy = req.context.clone();
                let Unwrap {
                    key: src,
                    blob,
                    aad,
                    hsm_id,
                } = self.prepare_unwrap(&req.blob, req.context, None, gate, &mut meta)?;
                let dest_name = match &req.destination_key {
                    Some(d) => {
                        validate::key_name("destination_key", d)?;
                        d.clone()
                    }
                    None => src.name.clone(),
                };
                let dest_ctx = validate::context(req.destination_context.unwrap_or(src_ctx_copy))?;
                let bg = gate(&dest_name, &dest_ctx).map_err(CoreError::PermissionDenied)?;
                meta.break_glass |= bg;
                let dest =
                    self.usable_of_kind("destination_key", &dest_name, "ReEncrypt", KeyKind::Aes)?;
                let v = dest.current().ok_or_else(|| CoreError::KeyUnusable {
                    name: dest.name.clone(),
                    state: "without an active version".into(),
                    operation: "ReEncrypt",
                })?;
                let (dv, did) = (v.version, v.hsm_id);
                let pt = self
                    .hsm
                    .decrypt_many(&[UnwrapItem {
                        key: hsm_id,
                        iv: blob.iv,
                        aad: &aad,
                        ciphertext: &blob.ciphertext,
                    }])
                    .pop()
                    .ok_or_else(|| CoreError::Internal("no unwrap result".into()))?
                    .map_err(CoreError::from_hsm)?;
                // A data key stays a data key, a payload a payload.
                let pt = opened(blob.format, pt)?;
                self.count_encryptions(&dest, dv, did, 1)?;
                let header = blob::header_of(blob.format, &dest.id, dv);
                let new_aad = blob::aad(&header, &blob::canonical_context(&dest_ctx));
                let (iv, ct) = self
                    .hsm
                    .encrypt_many(&did, &[(&new_aad, pt.expose())])
                    .map_err(CoreError::from_hsm)?
                    .pop()
                    .ok_or_else(|| CoreError::Internal("no wrap result".into()))?;
                drop(pt);
                self.still_usable(&dest.name, dv, "ReEncrypt")?;
                Ok(ReEncrypted {
                    source_key: src.name.clone(),
                    source_version: blob.key_version,
                    key: dest.name.clone(),
                    key_id: dest.id_text(),
                    key_version: dv,
                    blob: Blob {
                        format: blob.format,
                        key_id: dest.id,
                        key_version: dv,
                        iv,
                        ciphertext: ct,
                    }
                    .encode(),
                })
            })();
            out.push(Item {
                key: meta.key,
                version: meta.version,
                break_glass: meta.break_glass,
                result,
            });
        }
        Ok(self.recheck(out, "ReEncrypt"))
    }
    /// Encryptions made under a version (an upper bound after a restart).
    pub fn encryptions(&self, id: &HsmKeyId) -> u64 {
        self.counters.locked().get(id).map(|c| c.used).unwrap_or(0)
    }
    /// Counts `n` encryptions under a version before they are made: refuses
    /// past the hard limit and persists a new reservation when needed.
    pub(super) fn count_encryptions(
        &self,
        key: &KeyRecord,
        version: u32,
        id: HsmKeyId,
        n: u64,
    ) -> CoreResult<()> {
        let limit = self.lifecycle.hard_limit_encryptions;
        let mut counters = self.counters.locked();
        let c = counters.entry(id).or_default();
        if c.used + n > limit {
            return Err(CoreError::VersionExhausted {
                name: key.name.clone(),
                version,
                limit,
            });
        }
        if c.used + n > c.reserved {
            // The next block starts where the record's reservations end: in
            // a cluster another node may have reserved the blocks above this
            // node's, and each encryption is counted in exactly one block.
            let ((start, want), _) = self.records().update(&key.name, |r| {
                let Some(v) = r.versions.iter_mut().find(|v| v.hsm_id == id) else {
                    return Ok((c.used, c.reserved));
                };
                let start = if v.reserved == c.reserved {
                    c.used
                } else {
                    c.used.max(v.reserved)
                };
                let want = (start + n)
                    .max(start.max(v.reserved) + self.lifecycle.reserve_block)
                    .min(limit);
                v.reserved = want;
                Ok((start, want))
            })?;
            if start + n > limit {
                return Err(CoreError::VersionExhausted {
                    name: key.name.clone(),
                    version,
                    limit,
                });
            }
            c.used = start;
            c.reserved = want;
        }
        c.used += n;
        Ok(())
    }
}
