//! The custodians' ceremonies: pass-throughs to the seal, and what the
//! core does around them (the audit signer and checkpoints at login and
//! logout, the registry loaded at unseal, client caches reset at seal).

use super::*;

impl Ceremonies<'_> {
    pub(crate) fn sync_context_key(&self) {
        let a = &self.audit;
        let set = self
            .seal
            .with_keyring(|k| a.set_context_key(Some(&*k.audit_key)));
        if set.is_err() {
            a.set_context_key(None);
        }
    }

    /// After a login: make sure the audit-signing key exists, publish its
    /// public half beside the log, install the signer, checkpoint.
    pub(crate) fn on_login(&self, reason: &str) {
        let audit = &self.audit;
        match self.hsm.ensure_signing_key() {
            Ok(point) => {
                if let Err(e) = audit.publish_public_key(&point) {
                    warn!(error = %e, "could not write the audit public key");
                }
                let hsm = self.hsm.clone();
                audit.set_signer(Some(Arc::new(move |d: &[u8; 32]| hsm.sign_digest(d))));
                if let Err(e) = audit.checkpoint(reason) {
                    warn!(error = %e, "audit checkpoint failed");
                }
            }
            Err(e) => warn!(error = %e, "no audit signing key; checkpoints are not signed"),
        }
    }

    /// Before a logout: a final signed checkpoint, then no signer.
    pub(crate) fn before_logout(&self, reason: &str) {
        // Key operations stop here, before the checkpoint that closes them.
        let logged_in = self.seal.begin_closing();
        let audit = &self.audit;
        if logged_in {
            if let Err(e) = audit.checkpoint(reason) {
                warn!(error = %e, "final audit checkpoint failed");
            }
        }
        audit.set_signer(None);
    }

    /// Whether init may run now (see [`Seal::check_init_allowed`]).
    pub fn check_init_allowed(&self) -> CoreResult<()> {
        Ok(self.seal.check_init_allowed()?)
    }

    /// The init ceremony (see [`Seal::init`]).
    pub fn init(
        &self,
        spec: ShareSpec<'_>,
        user_pin: Pin,
        so_pin: Pin,
    ) -> CoreResult<Vec<IssuedShare>> {
        let r = self.seal.init(self.hsm.as_ref(), spec, user_pin, so_pin);
        self.seal_changed.notify_one();
        Ok(r?)
    }

    /// The scheduler's second try at a login whose registry did not load.
    pub(crate) fn retry_login(&self) {
        self.after_login("registry loaded on retry");
        self.seal_changed.notify_one();
    }

    /// Everything that follows a login: the verified registry, session
    /// copies, the audit signer, overdue lifecycle work.
    pub(crate) fn after_login(&self, reason: &str) {
        // The seal is logged in but not yet open for keys. A registry that
        // cannot be loaded keeps it so (key operations refused, fail
        // closed); the scheduler tries again.
        if let Err(e) = self.records().load_table() {
            warn!(error = %e, "loading the registry failed; key operations stay refused until it loads (retried by the scheduler)");
            return;
        }
        self.sync_context_key();
        if !self.seal.open_for_keys() {
            // Sealed or closing meanwhile: nothing more to do.
            return;
        }
        if let Err(e) = self.reconcile() {
            warn!(error = %e, "reconciliation failed");
        }
        self.on_login(reason);
        // Destructions and rotations that fell due while sealed or down.
        self.keys().tick();
    }

    /// Submits one unseal share; at the threshold the daemon unseals.
    /// `accept_restore_window`: the custodian accepts the window a restore
    /// without the audit trail may have lost (refused without it while one
    /// stands).
    pub fn unseal(&self, share: &str, accept_restore_window: bool) -> CoreResult<ShareProgress> {
        let p = self.seal.submit_unseal_share_accepting(
            self.hsm.as_ref(),
            share,
            accept_restore_window,
        );
        if let Ok(p) = &p {
            if p.complete {
                self.after_login("unseal");
            }
        }
        self.seal_changed.notify_one();
        Ok(p?)
    }

    /// Forgets the unseal shares received so far; returns how many were
    /// discarded.
    pub fn unseal_reset(&self) -> CoreResult<usize> {
        let r = self.seal.reset_unseal();
        self.seal_changed.notify_one();
        Ok(r?)
    }

    /// Seals: a final audit checkpoint, watchers told to reset, the seal
    /// closed (logout, session copies and keyring dropped), then the
    /// registry table emptied. Key operations are refused from here on.
    pub fn seal(&self) -> CoreResult<()> {
        self.before_logout("seal");
        let _ = self.changes.send(KeyChange::Reset);
        let r = self.seal.seal(self.hsm.as_ref());
        // After the seal: a concurrent unseal cannot set the key again.
        self.sync_context_key();
        self.seal_changed.notify_one();
        r?;
        *self.table.write_locked() = Table::default();
        Ok(())
    }

    /// Starts a rekey to the share set `spec` describes; returns the rekey's
    /// id and the current threshold (the old shares it needs). Refused while
    /// another rekey is in progress.
    pub fn rekey_start(&self, spec: ShareSpec<'_>) -> CoreResult<(String, u8)> {
        let r = self.seal.rekey_start(spec);
        self.seal_changed.notify_one();
        Ok(r?)
    }

    /// Submits a current share to the rekey. At the old threshold the new
    /// shares are issued (returned once) and the rekey waits for them to be
    /// verified.
    pub fn rekey_submit(
        &self,
        share: &str,
    ) -> CoreResult<(ShareProgress, Option<crate::seal::NewShareSet>)> {
        let r = self.seal.rekey_submit(share);
        self.seal_changed.notify_one();
        Ok(r?)
    }

    /// Submits a new share back for verification. At the new threshold the
    /// rekey commits (the old shares stop working) and the login is
    /// renewed; a commit whose re-login failed leaves the daemon sealed.
    pub fn rekey_verify(&self, share: &str) -> CoreResult<ShareProgress> {
        let r = self.seal.rekey_verify(self.hsm.as_ref(), share);
        // A commit whose re-login failed leaves the daemon sealed.
        if !self.seal.logged_in() {
            self.sync_context_key();
        }
        let p = r.inspect_err(|_| self.seal_changed.notify_one())?;
        if p.complete {
            // The login was renewed: session copies must be made again.
            self.after_login("rekey");
        }
        self.seal_changed.notify_one();
        Ok(p)
    }

    /// Cancels the rekey in progress; the current share set stays in force.
    pub fn rekey_cancel(&self) -> CoreResult<()> {
        let r = self.seal.rekey_cancel();
        self.seal_changed.notify_one();
        Ok(r?)
    }
}
