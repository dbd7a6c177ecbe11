//! Submitting unseal shares: the quorum opens the token.

use super::*;

impl Seal {
    /// Submits one share toward unseal. At the threshold: reconstruct,
    /// confirm with the check value, derive the PIN, log in, open the
    /// keyring. Returns the progress; `complete` means unsealed.
    pub fn submit_unseal_share(&self, hsm: &dyn Hsm, text: &str) -> SealResult<ShareProgress> {
        self.audited(|| -> SealResult<ShareProgress> {
            let mut inner = self.inner();
            match self.phase() {
                Phase::Uninitialized => return Err(SealError::NotInitialized),
                Phase::Unsealed => return Err(SealError::AlreadyUnsealed),
                Phase::Sealed => {}
            }
            self.expire(&mut inner);
            let parsed = share::parse(text).map_err(|e| {
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": e.to_string()}),
                );
                SealError::BadShare(e)
            })?;
            let got = hex::encode(parsed.set_id);
            let mut file = [inner.current.as_ref(), inner.pending.as_ref()]
                .into_iter()
                .flatten()
                .find(|f| f.set_id == got)
                .cloned();
            let Some(mut file) = file.take() else {
                let want = inner
                    .current
                    .as_ref()
                    .map(|f| f.set_id.clone())
                    .unwrap_or_default();
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": "other share set", "share_set": got}),
                );
                return Err(SealError::WrongSet { got, want });
            };
            if parsed.threshold != file.threshold {
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": "threshold mismatch", "index": parsed.bytes.index}),
                );
                return Err(SealError::WrongThreshold {
                    got: parsed.threshold,
                    want: file.threshold,
                    set_id: file.set_id.clone(),
                });
            }
            let progress = match &mut inner.progress {
                Some(p) if p.set_id == parsed.set_id => p,
                slot => {
                    if let Some(old) = slot.as_ref() {
                        // Shares of the other set (interrupted rekey) start over.
                        self.note(
                            EventKind::UnsealProgressReset,
                            Outcome::Reset,
                            json!({"received": old.shares.len()}),
                        );
                    }
                    slot.insert(Progress::new(
                        parsed.set_id,
                        file.threshold,
                        self.clock.monotonic(),
                    ))
                }
            };
            if progress
                .shares
                .iter()
                .any(|s| s.index == parsed.bytes.index)
            {
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": "duplicate", "index": parsed.bytes.index}),
                );
                return Err(SealError::Duplicate {
                    index: parsed.bytes.index,
                    received: progress.shares.len(),
                    threshold: progress.threshold,
                });
            }
            progress.shares.push(parsed.bytes);
            let received = progress.shares.len();
            let threshold = progress.threshold;
            self.note(
                EventKind::UnsealShare,
                Outcome::Accepted,
                json!({"set_id": file.set_id, "received": received, "threshold": threshold}),
            );
            if received < threshold as usize {
                return Ok(ShareProgress {
                    received,
                    threshold,
                    set_id: file.set_id,
                    complete: false,
                });
            }

            // Threshold reached: whatever happens next, the shares are dropped.
            let Some(progress) = inner.progress.take() else {
                return Err(SealError::Internal("progress vanished"));
            };
            let set_id = progress.set_id;
            let refs: Vec<&ShareBytes> = progress.shares.iter().collect();
            let key = shamir::combine(&refs).map_err(SealError::Shamir)?;
            drop(refs);
            drop(progress);
            let check = file.check().map_err(SealError::Storage)?;
            if !key.matches(&set_id, &check) {
                self.note(
                    EventKind::Unseal,
                    Outcome::Failed,
                    json!({"reason": "check value mismatch", "set_id": file.set_id}),
                );
                return Err(SealError::ReconstructionFailed);
            }
            // The key is confirmed: now the metadata around it must verify
            // before anything in it (pending_init above all) is acted on.
            if let Err(why) = file.verify(&key) {
                self.note(
                    EventKind::SealTampering,
                    Outcome::Detected,
                    json!({"what": why.to_string(), "set_id": file.set_id}),
                );
                return Err(SealError::Tampered(why.to_string()));
            }
            let keyring = file.open_keyring(&key).map_err(SealError::Storage)?;
            if file.pending_init {
                // The first quorum proved the shares work: now, and only now,
                // the provisioning PINs give way to the derived ones.
                let Some(pins) = inner.init_pins.take() else {
                    self.note(
                        EventKind::InitCommit,
                        Outcome::Failed,
                        json!({"reason": "provisioning PINs gone (restart)"}),
                    );
                    return Err(SealError::InitIncomplete);
                };
                if let Err(e) = hsm.change_pins(
                    &pins.user,
                    &key.user_pin(&set_id),
                    &pins.so,
                    &key.so_pin(&set_id),
                ) {
                    self.note(
                        EventKind::InitCommit,
                        Outcome::Failed,
                        json!({"reason": e.to_string()}),
                    );
                    inner.init_pins = Some(pins);
                    return Err(SealError::Hsm(e));
                }
                drop(pins);
                file.pending_init = false;
                file.authenticate(&key).map_err(SealError::Storage)?;
                self.store.save(&file).map_err(SealError::Storage)?;
                inner.current = Some(file.clone());
                self.note(
                    EventKind::InitCommit,
                    Outcome::Ok,
                    json!({"set_id": file.set_id}),
                );
            }
            if let Err(e) = hsm.login(&key.user_pin(&set_id)) {
                self.note(
                    EventKind::Unseal,
                    Outcome::Failed,
                    json!({"reason": e.to_string()}),
                );
                return Err(SealError::Hsm(e));
            }
            drop(key);
            // An interrupted rekey is settled by whichever set logged in.
            let is_pending = inner.pending.as_ref().map(|p| p.set_id == file.set_id) == Some(true);
            if is_pending {
                self.store.promote_pending().map_err(SealError::Storage)?;
                inner.current = inner.pending.take();
            } else if inner.pending.is_some() {
                self.store.discard_pending().map_err(SealError::Storage)?;
                inner.pending = None;
            }
            inner.keyring = Some(keyring);
            self.set_phase(Phase::Unsealed);
            self.note(
                EventKind::Unseal,
                Outcome::Ok,
                json!({"set_id": file.set_id}),
            );
            Ok(ShareProgress {
                received,
                threshold,
                set_id: file.set_id,
                complete: true,
            })
        })
    }
    /// Forgets the shares received so far.
    pub fn reset_unseal(&self) -> SealResult<usize> {
        self.audited(|| -> SealResult<usize> {
            let mut inner = self.inner();
            let n = inner.progress.take().map(|p| p.shares.len()).unwrap_or(0);
            self.note(EventKind::UnsealReset, Outcome::Ok, json!({"discarded": n}));
            Ok(n)
        })
    }
}
