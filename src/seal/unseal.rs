//! Submitting unseal shares: the quorum opens the token.

use super::*;

impl Seal {
    /// Submits one share toward unseal. At the threshold: reconstruct,
    /// confirm with the check value, derive the PIN, log in, open the
    /// keyring. Returns the progress; `complete` means unsealed.
    pub fn submit_unseal_share(&self, hsm: &dyn Hsm, text: &str) -> SealResult<ShareProgress> {
        self.submit_unseal_share_accepting(hsm, text, false)
    }

    /// [`Self::submit_unseal_share`], with the custodian's answer to a
    /// restore window: a state restored without the audit trail since its
    /// backup unseals only with a quorum of shares that each accept it.
    pub fn submit_unseal_share_accepting(
        &self,
        hsm: &dyn Hsm,
        text: &str,
        accept_restore_window: bool,
    ) -> SealResult<ShareProgress> {
        self.audited(|| -> SealResult<ShareProgress> {
            let mut inner = self.inner();
            // In a cluster a ceremony starts from the seal files as the
            // cluster has them (a rekey or an init on another node).
            let starting = matches!(
                inner.state,
                State::Uninitialized | State::Sealed { progress: None, .. }
            );
            if starting {
                self.refresh(&mut inner)?;
            }
            match &inner.state {
                State::Uninitialized => return Err(SealError::NotInitialized),
                State::Unsealed { .. } => return Err(SealError::AlreadyUnsealed),
                State::Sealed { .. } => {}
            }
            self.expire(&mut inner);
            let (parsed, file) =
                self.share_and_file(&mut inner, text, starting, accept_restore_window)?;
            let started = self.clock.monotonic();
            let State::Sealed { progress: slot, .. } = &mut inner.state else {
                return Err(SealError::AlreadyUnsealed);
            };
            let progress = match slot {
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
                    slot.insert(Progress::new(parsed.set_id, file.threshold, started))
                }
            };
            let index = parsed.bytes.index;
            let (received, threshold) = progress.accept(
                parsed,
                EventKind::UnsealShare,
                ("set_id", &file.set_id),
                &self.pending,
            )?;
            if let Some(w) = &file.restore_window {
                // This custodian's own acceptance, on the record.
                self.note(
                    EventKind::RestoreWindowAccepted,
                    Outcome::Accepted,
                    json!({"index": index, "backup": w.backup, "backup_created_at": w.backup_created_at}),
                );
            }
            if received < threshold as usize {
                return Ok(ShareProgress {
                    received,
                    threshold,
                    set_id: file.set_id,
                    complete: false,
                });
            }

            let set_id = self.quorum_reached(hsm, &mut inner, file, index)?;
            Ok(ShareProgress {
                received,
                threshold,
                set_id,
                complete: true,
            })
        })
    }

    /// Parses a share and finds the seal file of its set: refused (and
    /// noted) if it does not parse, is of no set this daemon knows, comes
    /// without accepting a restore window, or names another threshold.
    fn share_and_file(
        &self,
        inner: &mut Inner,
        text: &str,
        starting: bool,
        accept_restore_window: bool,
    ) -> SealResult<(share::Share, SealFile)> {
        let parsed = share::parse(text).map_err(|e| {
            self.note(
                EventKind::UnsealShare,
                Outcome::Refused,
                json!({"reason": e.to_string()}),
            );
            SealError::BadShare(e)
        })?;
        let got = hex::encode(parsed.set_id);
        if !starting && !Self::knows_set(inner, &got) {
            self.refresh(inner)?;
        }
        let file = [inner.current.as_ref(), inner.pending.as_ref()]
            .into_iter()
            .flatten()
            .find(|f| f.set_id == got)
            .cloned();
        let Some(file) = file else {
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
        if let (Some(w), false) = (&file.restore_window, accept_restore_window) {
            self.note(
                EventKind::UnsealShare,
                Outcome::Refused,
                json!({"reason": "restore window not accepted", "index": parsed.bytes.index, "backup": w.backup}),
            );
            return Err(SealError::RestoreWindowNotAccepted {
                backup_time: w.backup_created_at,
            });
        }
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
        Ok((parsed, file))
    }

    /// The threshold is reached: under the ceremony lock (in a cluster),
    /// with the files read again, the quorum opens the token. `index` is
    /// the last share's, handed back if the lock cannot be taken.
    fn quorum_reached(
        &self,
        hsm: &dyn Hsm,
        inner: &mut Inner,
        file: SealFile,
        index: u8,
    ) -> SealResult<String> {
        // Threshold reached. In a cluster, the ceremony lock is held
        // from here to the end (no other node's rekey commit between
        // this login and what it settles), and the files are read again
        // under it. If that fails, this last share is handed back (the
        // others are kept): submitted again, it completes the quorum.
        let locked = match self.store.lock() {
            Ok(l) => self.refresh(inner).map(|()| l),
            Err(e) => Err(SealError::Storage(e)),
        };
        let _lock = match locked {
            Ok(l) => l,
            Err(e) => {
                if let State::Sealed {
                    progress: Some(p), ..
                } = &mut inner.state
                {
                    p.shares.pop();
                }
                self.note(
                    EventKind::UnsealShare,
                    Outcome::Refused,
                    json!({"reason": e.to_string(), "index": index}),
                );
                return Err(e);
            }
        };
        if !Self::knows_set(inner, &file.set_id) {
            // Another node committed a rekey while these were gathered:
            // not one login attempt is spent on PINs the token dropped.
            let want = inner
                .current
                .as_ref()
                .map(|f| f.set_id.clone())
                .unwrap_or_default();
            if let State::Sealed { progress, .. } = &mut inner.state {
                *progress = None;
            }
            self.note(
                EventKind::Unseal,
                Outcome::Refused,
                json!({"reason": "share set replaced by a rekey on another node", "set_id": file.set_id}),
            );
            return Err(SealError::WrongSet {
                got: file.set_id,
                want,
            });
        }
        // As the cluster has it now (a settled field, say).
        let file = [inner.current.as_ref(), inner.pending.as_ref()]
            .into_iter()
            .flatten()
            .find(|f| f.set_id == file.set_id)
            .cloned()
            .unwrap_or(file);
        // Whatever happens next, the shares are dropped; the
        // provisioning PINs (if init is pending) stay unless they were
        // used.
        let State::Sealed {
            progress,
            init_pins,
        } = std::mem::replace(&mut inner.state, State::sealed())
        else {
            return Err(SealError::Internal("state changed under the lock"));
        };
        let Some(progress) = progress else {
            return Err(SealError::Internal("progress vanished"));
        };
        let mut pins = init_pins;
        let opened = self.open_with_quorum(hsm, inner, file, progress, &mut pins);
        if let State::Sealed { init_pins, .. } = &mut inner.state {
            *init_pins = pins;
        }
        opened
    }

    /// Reconstructs the unseal key from a full quorum, verifies the seal
    /// file, commits a pending init, logs in and opens the keyring: on
    /// success the state is unsealed (loading). `pins` are the provisioning
    /// PINs, consumed only by a successful init commit.
    fn open_with_quorum(
        &self,
        hsm: &dyn Hsm,
        inner: &mut Inner,
        mut file: SealFile,
        progress: Progress,
        pins: &mut Option<InitPins>,
    ) -> SealResult<String> {
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
        if self.store.is_shared() {
            // Another node may have changed the token's PINs (a rekey).
            if let Err(e) = hsm.reload_token() {
                self.note(
                    EventKind::Unseal,
                    Outcome::Failed,
                    json!({"reason": e.to_string()}),
                );
                return Err(SealError::Hsm(e));
            }
        }
        let logged_in = if file.pending_init {
            self.commit_init(hsm, inner, &mut file, &key, set_id, pins)?
        } else {
            false
        };
        if !logged_in {
            if let Err(e) = hsm.login(&key.user_pin(&set_id)) {
                self.note(
                    EventKind::Unseal,
                    Outcome::Failed,
                    json!({"reason": e.to_string()}),
                );
                return Err(SealError::Hsm(e));
            }
        }
        // Logged in: what this quorum vouches for in seal.json is settled.
        if let Err(e) = self.settle_seal_file(inner, &mut file, &key) {
            hsm.logout();
            return Err(e);
        }
        drop(key);
        // An interrupted rekey is settled by whichever set logged in. A
        // failure to record that leaves the daemon sealed and logged out.
        let is_pending = inner.pending.as_ref().map(|p| p.set_id == file.set_id) == Some(true);
        let settled = if is_pending {
            self.store.promote_pending(&file.set_id).map(|()| {
                inner.current = inner.pending.take();
            })
        } else if let Some(dead) = inner.pending.as_ref().map(|p| p.set_id.clone()) {
            self.store.discard_pending(&dead).map(|()| {
                inner.pending = None;
            })
        } else {
            self.store.adopt(&file)
        };
        if let Err(e) = settled {
            hsm.logout();
            return Err(SealError::Storage(e));
        }
        inner.state = State::Unsealed {
            keyring,
            rekey: None,
            serving: Serving::Loading,
        };
        self.note(
            EventKind::Unseal,
            Outcome::Ok,
            json!({"set_id": file.set_id}),
        );
        Ok(file.set_id)
    }

    /// Commits a pending init with the first quorum: the provisioning PINs
    /// give way to the derived ones (or, after a restart, the derived PIN
    /// proves they already did), and the seal file says so. Returns whether
    /// it left the token logged in.
    fn commit_init(
        &self,
        hsm: &dyn Hsm,
        inner: &mut Inner,
        file: &mut SealFile,
        key: &UnsealKey,
        set_id: [u8; 4],
        pins: &mut Option<InitPins>,
    ) -> SealResult<bool> {
        let mut logged_in = false;
        // The first quorum proved the shares work: now, and only now,
        // the provisioning PINs give way to the derived ones.
        match pins.take() {
            Some(p) => {
                if let Err(e) =
                    hsm.change_pins(&p.user, &key.user_pin(&set_id), &p.so, &key.so_pin(&set_id))
                {
                    self.note(
                        EventKind::InitCommit,
                        Outcome::Failed,
                        json!({"reason": e.to_string()}),
                    );
                    *pins = Some(p);
                    return Err(SealError::Hsm(e));
                }
            }
            None => {
                // No provisioning PINs: the daemon restarted after init,
                // or it crashed after changing the PINs and before the
                // seal file said so. If the derived PIN logs in, the
                // change happened: finish the commit. (Otherwise this
                // spent one user-PIN attempt; init must run again.)
                if hsm.login(&key.user_pin(&set_id)).is_err() {
                    self.note(
                        EventKind::InitCommit,
                        Outcome::Failed,
                        json!({"reason": "provisioning PINs gone (restart)"}),
                    );
                    return Err(SealError::InitIncomplete);
                }
                logged_in = true;
            }
        }
        file.pending_init = false;
        let saved = file.authenticate(key).and_then(|()| self.store.save(file));
        if let Err(e) = saved {
            if logged_in {
                hsm.logout();
            }
            return Err(SealError::Storage(e));
        }
        inner.current = Some(file.clone());
        self.note(
            EventKind::InitCommit,
            Outcome::Ok,
            json!({"set_id": file.set_id, "finished_after_restart": logged_in}),
        );
        Ok(logged_in)
    }

    /// Whether `set_id` is the current or the pending share set.
    fn knows_set(inner: &Inner, set_id: &str) -> bool {
        [inner.current.as_ref(), inner.pending.as_ref()]
            .into_iter()
            .flatten()
            .any(|f| f.set_id == set_id)
    }

    /// What a verified quorum settles in `seal.json` besides init: the
    /// backup recipient of a file written before backups existed, and a
    /// restore window the quorum accepted (every share was refused unless
    /// its custodian accepted it).
    fn settle_seal_file(
        &self,
        inner: &mut Inner,
        file: &mut SealFile,
        key: &UnsealKey,
    ) -> SealResult<()> {
        let set_id = file.set_id().map_err(SealError::Storage)?;
        inner.verified_recipient = None;
        let mut changed = false;
        if file.backup_recipient.is_empty() {
            file.backup_recipient = key
                .backup_recipient(&set_id)
                .ok_or(SealError::Internal("deriving the backup recipient"))?;
            changed = true;
        }
        let accepted = file.restore_window.take();
        if !changed && accepted.is_none() {
            inner.verified_recipient = Some(file.backup_recipient.clone());
            return Ok(());
        }
        file.authenticate(key).map_err(SealError::Storage)?;
        if inner.pending.as_ref().map(|p| p.set_id == file.set_id) == Some(true) {
            self.store.save_pending(file).map_err(SealError::Storage)?;
            inner.pending = Some(file.clone());
        } else {
            self.store.save(file).map_err(SealError::Storage)?;
            inner.current = Some(file.clone());
        }
        inner.verified_recipient = Some(file.backup_recipient.clone());
        if let Some(w) = accepted {
            self.note(
                EventKind::RestoreWindowAccepted,
                Outcome::Ok,
                json!({"backup": w.backup, "backup_created_at": w.backup_created_at, "generation": w.generation, "restored_at": w.restored_at, "set_id": file.set_id}),
            );
        }
        Ok(())
    }

    /// Forgets the shares received so far.
    pub fn reset_unseal(&self) -> SealResult<usize> {
        self.audited(|| -> SealResult<usize> {
            let mut inner = self.inner();
            let n = match &mut inner.state {
                State::Sealed { progress, .. } => progress.take().map(|p| p.shares.len()),
                _ => None,
            }
            .unwrap_or(0);
            self.note(EventKind::UnsealReset, Outcome::Ok, json!({"discarded": n}));
            Ok(n)
        })
    }
}
