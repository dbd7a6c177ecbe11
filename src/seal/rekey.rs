//! Rekey: a new share set from a quorum of the current one, verified by
//! a quorum of the new one before it replaces the old.

use super::*;

pub(super) enum Rekey {
    /// Waiting for a quorum of the current shares.
    CollectingOld {
        id: String,
        plan: RekeyPlan,
        progress: Progress,
    },
    /// New shares were issued; waiting for a quorum of them back.
    Verifying {
        id: String,
        new_key: UnsealKey,
        new_set: [u8; 4],
        shares: u8,
        progress: Progress,
        /// The current PINs, derived when the old quorum was reached; needed
        /// to change them at commit.
        old_user: Pin,
        old_so: Pin,
    },
}

impl Rekey {
    pub(super) fn id(&self) -> &str {
        match self {
            Rekey::CollectingOld { id, .. } | Rekey::Verifying { id, .. } => id,
        }
    }

    pub(super) fn started(&self) -> Duration {
        match self {
            Rekey::CollectingOld { progress, .. } | Rekey::Verifying { progress, .. } => {
                progress.started
            }
        }
    }
}

impl Seal {
    /// Starts a rekey; it needs a quorum of the current shares.
    pub fn rekey_start(&self, spec: ShareSpec<'_>) -> SealResult<(String, u8)> {
        self.audited(|| -> SealResult<(String, u8)> {
            let mut inner = self.inner();
            if let Some(refused) = inner.refusal() {
                return Err(refused);
            }
            self.expire(&mut inner);
            if let Some(Some(r)) = inner.rekey() {
                return Err(SealError::RekeyInProgress {
                    id: r.id().to_string(),
                });
            }
            let plan = validate_plan(spec, self.config.allow_single_share)?;
            let Some(current) = inner.current.as_ref() else {
                return Err(SealError::NotInitialized);
            };
            let set_id = current.set_id().map_err(SealError::Storage)?;
            let old_threshold = current.threshold;
            let id = hex::encode(random_set_id()?);
            self.note(
                EventKind::RekeyStart,
                Outcome::Ok,
                json!({"rekey_id": id, "shares": plan.shares, "threshold": plan.threshold}),
            );
            let started = self.clock.monotonic();
            let Some(slot) = inner.rekey() else {
                return Err(SealError::Internal("unsealed without a rekey slot"));
            };
            *slot = Some(Rekey::CollectingOld {
                id: id.clone(),
                plan,
                progress: Progress::new(set_id, old_threshold, started),
            });
            Ok((id, old_threshold))
        })
    }
    /// Cancels the rekey in progress; the current set stays in force.
    pub fn rekey_cancel(&self) -> SealResult<()> {
        self.audited(|| -> SealResult<()> {
            let mut inner = self.inner();
            match inner.rekey().and_then(Option::take) {
                Some(r) => {
                    self.note(
                        EventKind::RekeyCancel,
                        Outcome::Ok,
                        json!({"rekey_id": r.id()}),
                    );
                    Ok(())
                }
                None => Err(SealError::NoRekey),
            }
        })
    }
    /// Submits a current share to a rekey. At the old threshold the new
    /// shares are issued (returned) and the rekey waits for verification.
    pub fn rekey_submit(&self, text: &str) -> SealResult<(ShareProgress, Option<NewShareSet>)> {
        self.audited(|| -> SealResult<(ShareProgress, Option<NewShareSet>)> {
            let mut inner = self.inner();
            // Only while open for business: not while loading or sealing.
            if let Some(refused) = inner.refusal() {
                return Err(refused);
            }
            self.expire(&mut inner);
            let current = inner.current.clone().ok_or(SealError::NotInitialized)?;
            let (id, progress) = match inner.rekey() {
                None | Some(None) => return Err(SealError::NoRekey),
                Some(Some(Rekey::Verifying { id, .. })) => {
                    return Err(SealError::WrongRekeyPhase {
                        id: id.clone(),
                        phase: "verifying new shares",
                        hint: "submit the NEW shares with `keywarden operator rekey --verify`",
                    })
                }
                Some(Some(Rekey::CollectingOld { id, progress, .. })) => (id.clone(), progress),
            };
            let parsed = share::parse(text).map_err(SealError::BadShare)?;
            let (received, threshold) =
                progress.accept(parsed, EventKind::RekeyShare, ("rekey_id", &id), &self.pending)?;
            if received < threshold as usize {
                return Ok((
                    ShareProgress {
                        received,
                        threshold,
                        set_id: current.set_id,
                        complete: false,
                    },
                    None,
                ));
            }
            let started = self.clock.monotonic();
            let Some(slot) = inner.rekey() else {
                return Err(SealError::NoRekey);
            };
            let Some(Rekey::CollectingOld { plan, progress, .. }) = slot.take() else {
                return Err(SealError::NoRekey);
            };
            let refs: Vec<&ShareBytes> = progress.shares.iter().collect();
            let old_key = shamir::combine(&refs).map_err(SealError::Shamir)?;
            drop(refs);
            let check = current.check().map_err(SealError::Storage)?;
            if !old_key.matches(&progress.set_id, &check) {
                self.note(EventKind::RekeyShare, Outcome::Failed,
                    json!({"rekey_id": id, "reason": "check value mismatch"}),
                );
                // Progress resets; the rekey itself stays open.
                *slot = Some(Rekey::CollectingOld {
                    id,
                    progress: Progress::new(progress.set_id, progress.threshold, started),
                    plan,
                });
                return Err(SealError::ReconstructionFailed);
            }
            let old_user = old_key.user_pin(&progress.set_id);
            let old_so = old_key.so_pin(&progress.set_id);
            drop(old_key);
            let new_key = UnsealKey::random().map_err(|e| SealError::Random(e.to_string()))?;
            let new_set = random_set_id()?;
            let issued = issue_shares(&new_key, &new_set, &plan)?;
            self.note(EventKind::RekeySharesIssued, Outcome::Ok,
                json!({"rekey_id": id, "new_set_id": hex::encode(new_set), "shares": plan.shares, "threshold": plan.threshold}),
            );
            *slot = Some(Rekey::Verifying {
                id,
                new_key,
                new_set,
                shares: plan.shares,
                progress: Progress::new(new_set, plan.threshold, started),
                old_user,
                old_so,
            });
            Ok((
                ShareProgress {
                    received,
                    threshold,
                    set_id: current.set_id,
                    complete: true,
                },
                Some(NewShareSet {
                    set_id: hex::encode(new_set),
                    shares: issued,
                }),
            ))
        })
    }
    /// Submits a NEW share back for verification. At the new threshold the
    /// rekey commits: the token PINs change and the old shares die.
    pub fn rekey_verify(&self, hsm: &dyn Hsm, text: &str) -> SealResult<ShareProgress> {
        self.audited(|| -> SealResult<ShareProgress> {
            let mut inner = self.inner();
            if let Some(refused) = inner.refusal() {
                return Err(refused);
            }
            self.expire(&mut inner);
            let (id, new_set, progress) = match inner.rekey() {
                None | Some(None) => return Err(SealError::NoRekey),
                Some(Some(Rekey::CollectingOld { id, .. })) => {
                    return Err(SealError::WrongRekeyPhase {
                        id: id.clone(),
                        phase: "collecting current shares",
                        hint: "submit the CURRENT shares with `keywarden operator rekey --submit`",
                    })
                }
                Some(Some(Rekey::Verifying {
                    id,
                    new_set,
                    progress,
                    ..
                })) => (id.clone(), *new_set, progress),
            };
            let parsed = share::parse(text).map_err(SealError::BadShare)?;
            let (received, threshold) = progress.accept(
                parsed,
                EventKind::RekeyVerifyShare,
                ("rekey_id", &id),
                &self.pending,
            )?;
            if received < threshold as usize {
                return Ok(ShareProgress {
                    received,
                    threshold,
                    set_id: hex::encode(new_set),
                    complete: false,
                });
            }
            let started = self.clock.monotonic();
            let Some(slot) = inner.rekey() else {
                return Err(SealError::NoRekey);
            };
            let Some(Rekey::Verifying {
                new_key,
                shares,
                progress,
                old_user,
                old_so,
                ..
            }) = slot.take()
            else {
                return Err(SealError::NoRekey);
            };
            let refs: Vec<&ShareBytes> = progress.shares.iter().collect();
            let rebuilt = shamir::combine(&refs).map_err(SealError::Shamir)?;
            drop(refs);
            if !rebuilt.matches(&new_set, &new_key.check_value(&new_set)) {
                self.note(
                    EventKind::RekeyVerify,
                    Outcome::Failed,
                    json!({"rekey_id": id}),
                );
                *slot = Some(Rekey::Verifying {
                    id,
                    new_key,
                    new_set,
                    shares,
                    progress: Progress::new(new_set, threshold, started),
                    old_user,
                    old_so,
                });
                return Err(SealError::ReconstructionFailed);
            }
            drop(rebuilt);
            let old = OldPins {
                user: old_user,
                so: old_so,
            };
            let new = NewSet {
                key: &new_key,
                set: new_set,
                shares,
                threshold,
            };
            self.commit_rekey(hsm, &mut inner, &id, &old, &new)?;
            Ok(ShareProgress {
                received,
                threshold,
                set_id: hex::encode(new_set),
                complete: true,
            })
        })
    }
    pub(super) fn commit_rekey(
        &self,
        hsm: &dyn Hsm,
        inner: &mut Inner,
        id: &str,
        old: &OldPins,
        new: &NewSet<'_>,
    ) -> SealResult<()> {
        let (new_key, new_set) = (new.key, new.set);
        let current = inner.current.clone().ok_or(SealError::NotInitialized)?;
        let State::Unsealed { keyring, .. } = &inner.state else {
            return Err(SealError::Sealed {
                received: 0,
                threshold: current.threshold,
            });
        };
        let file = SealFile::new(
            new_key,
            new_set,
            new.shares,
            new.threshold,
            keyring,
            self.clock.now_secs(),
        )
        .map_err(SealError::Storage)?;
        let new_set_id = hex::encode(new_set);
        // In a cluster: the ceremony lock until the end, and the set this
        // rekey replaces must still be the cluster's.
        let _lock = self.store.lock().map_err(SealError::Storage)?;
        if let Some(files) = self.store.reload_shared().map_err(SealError::Storage)? {
            if let Some(now) = files.current.filter(|f| f.set_id != current.set_id) {
                self.note(
                    EventKind::RekeyCommit,
                    Outcome::Refused,
                    json!({"rekey_id": id, "reason": "another node rekeyed first", "set_id": now.set_id}),
                );
                return Err(SealError::RekeySuperseded { set_id: now.set_id });
            }
        }
        self.store.save_pending(&file).map_err(SealError::Storage)?;
        hsm.logout();
        let changed = hsm.change_pins(
            &old.user,
            &new_key.user_pin(&new_set),
            &old.so,
            &new_key.so_pin(&new_set),
        );
        if let Err(e) = changed {
            let _ = self.store.discard_pending(&new_set_id);
            let relogin = hsm.login(&old.user);
            self.note(
                EventKind::RekeyCommit,
                Outcome::Failed,
                json!({"rekey_id": id, "reason": e.to_string()}),
            );
            if relogin.is_err() {
                inner.state = State::sealed();
            }
            return Err(SealError::Hsm(e));
        }
        // Made here under the new key a quorum verified: its recipient is.
        inner.verified_recipient = Some(file.backup_recipient.clone());
        if let Err(e) = self.store.promote_pending(&new_set_id) {
            // The token has the new PINs, the new set is on disk as
            // pending: sealed, and the next unseal accepts either set.
            inner.pending = Some(file);
            inner.state = State::sealed();
            self.note(
                EventKind::RekeyCommit,
                Outcome::CommittedButSealed,
                json!({"rekey_id": id, "reason": e.to_string()}),
            );
            return Err(SealError::Storage(e));
        }
        inner.current = Some(file);
        if let Err(e) = hsm.login(&new_key.user_pin(&new_set)) {
            inner.state = State::sealed();
            self.note(
                EventKind::RekeyCommit,
                Outcome::CommittedButSealed,
                json!({"rekey_id": id, "reason": e.to_string()}),
            );
            return Err(SealError::Hsm(e));
        }
        // The login was renewed: the owner must load again (session copies).
        // Only an open daemon goes back to loading; one that is closing
        // stays closing (a rekey never reopens a daemon being sealed).
        if let State::Unsealed { serving, .. } = &mut inner.state {
            if *serving == Serving::Open {
                *serving = Serving::Loading;
            }
        }
        self.note(EventKind::RekeyCommit, Outcome::Ok,
            json!({"rekey_id": id, "new_set_id": hex::encode(new_set), "old_set_id": current.set_id}),
        );
        Ok(())
    }
}

/// The set a rekey commits: its unseal key, id, shares and threshold.
pub(super) struct NewSet<'a> {
    pub key: &'a UnsealKey,
    pub set: [u8; 4],
    pub shares: u8,
    pub threshold: u8,
}
