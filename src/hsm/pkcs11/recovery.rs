//! Recovery from a lost token: noticing the loss, re-initialising the
//! module, finding the same token by serial, logging in again with the PIN
//! kept for that purpose, and rebuilding the session copies of every
//! activated CMK version.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cryptoki::context::CInitializeArgs;
use cryptoki::context::CInitializeFlags;
use cryptoki::error::{Error as CkError, RvError};

use super::error::{self, ck};
use super::objects::select_token;
use super::{Live, Pkcs11Hsm};
use crate::config::TokenSelector;
use crate::hsm::{HsmError, HsmKeyId, HsmResult};
use crate::secret::Pin;
use crate::sync::{Recover, RecoverRw};

impl Pkcs11Hsm {
    /// Marks the HSM lost if `e` says the token or our sessions are gone
    /// (only while logged in: a sealed daemon has nothing to recover).
    pub(super) fn note_loss(&self, e: &HsmError, generation: u32) {
        if !e.is_loss() || self.relogin.locked().is_none() {
            return;
        }
        let current = self.live.read_locked().as_ref().map(|l| l.pool.generation);
        if current != Some(generation) {
            // A call that started before the last recovery.
            return;
        }
        let mut lost = self.lost.write_locked();
        if lost.is_none() {
            tracing::warn!(error = %e, "HSM lost: key operations fail with UNAVAILABLE until it is back");
            *lost = Some(e.clone());
        }
    }

    /// C_Finalize, then C_Initialize, on the loaded module. If C_Initialize
    /// fails (the token still away) the module is left finalised: the
    /// next login or recovery must initialise it again ([`Self::reselect`]).
    fn reinitialize(&self) -> HsmResult<()> {
        tracing::info!("re-initialising the PKCS#11 module");
        // C_Finalize fails with CKR_CRYPTOKI_NOT_INITIALIZED when the module
        // already dropped its state; either way it is initialised next.
        let _ = self.ctx.clone().finalize();
        match self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => Err(ck(e)),
        }
    }

    /// Finds the same token again (by serial: a different token that
    /// carries the same label is not accepted) and logs in.
    fn reconnect(&self, pin: &Pin, reinit: bool) -> HsmResult<Arc<Live>> {
        if reinit {
            self.reinitialize()?;
        }
        let same = TokenSelector::Serial(self.token.serial.clone());
        let (slot, _) = match select_token(&self.ctx, &same) {
            Err(e) if e.is_loss() && !reinit => {
                self.reinitialize()?;
                select_token(&self.ctx, &same)?
            }
            other => other?,
        };
        *self.slot.write_locked() = slot;
        let live = self.open_live(pin)?;
        let ids: Vec<HsmKeyId> = self.activated.locked().iter().copied().collect();
        for id in ids {
            match self.activate_in(&live, &id) {
                Ok(()) => {}
                // Destroyed meanwhile: nothing to rebuild.
                Err(HsmError::ObjectNotFound(_)) => {
                    self.activated.locked().remove(&id);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(live)
    }

    /// [`Hsm::reload_token`]: C_Finalize and C_Initialize while no session
    /// is ours, then the same token found again by serial.
    pub(super) fn reload_logged_out(&self) -> HsmResult<()> {
        let _transition = self.transitions.locked();
        if self.live.read_locked().is_some() {
            return Ok(());
        }
        self.reselect()
    }

    /// The module initialised again and the same token found by serial
    /// (its slot may have changed). The caller holds `transitions`.
    pub(super) fn reselect(&self) -> HsmResult<()> {
        self.reinitialize()?;
        let same = TokenSelector::Serial(self.token.serial.clone());
        let (slot, _) = select_token(&self.ctx, &same)?;
        *self.slot.write_locked() = slot;
        Ok(())
    }

    /// One recovery attempt ([`Hsm::recover`]).
    pub(super) fn recover_now(&self) -> HsmResult<bool> {
        let _transition = self.transitions.locked();
        let reason = self.lost.read_locked().clone();
        let Some(reason) = reason else {
            return Ok(false);
        };
        // A short-lived second copy, so the lock is not held while the
        // module is called (recovery may mark the HSM lost again).
        let pin = self
            .relogin
            .locked()
            .as_ref()
            .map(Pin::duplicate_for_relogin);
        let Some(pin) = pin else {
            // Sealed meanwhile: nothing to log in to.
            *self.lost.write_locked() = None;
            return Ok(false);
        };
        // The old sessions are dead: drop them (in-flight calls keep their
        // own reference until they fail).
        drop(self.live.write_locked().take());
        let failed = self.failed_recoveries.load(Ordering::Relaxed);
        // Re-initialise the module when it says so, or when plain
        // reconnecting has failed twice (some modules see a re-plugged token
        // only after C_Initialize).
        let reinit = failed >= 2 || error::is_rv(&reason, RvError::CryptokiNotInitialized);
        match self.reconnect(&pin, reinit) {
            Ok(live) => {
                *self.live.write_locked() = Some(live);
                *self.lost.write_locked() = None;
                self.failed_recoveries.store(0, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.failed_recoveries.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}
