//! Logging in and out of the token, and the PIN ceremonies (checking and
//! changing both PINs while logged out). Login, logout and recovery are
//! serialised by the `transitions` lock.

use cryptoki::object::ObjectHandle;
use cryptoki::session::UserType;

use super::error::{ck, pin_err};
use super::Pkcs11Hsm;
use crate::hsm::{Hsm, HsmError, HsmResult};
use crate::secret::Pin;
use crate::sync::{Recover, RecoverRw};

impl Pkcs11Hsm {
    /// [`Hsm::login`].
    pub(super) fn login_now(&self, pin: &Pin) -> HsmResult<()> {
        // A recovery attempt in progress finishes first (it holds this).
        let _transition = self.transitions.locked();
        let mut live = self.live.write_locked();
        if live.is_some() {
            return Ok(());
        }
        let opened = match self.open_live(pin) {
            // A recovery attempt made while the token was away can leave the
            // module finalised (C_Initialize failed) or the slot stale: the
            // token is found again and the login tried once more, so a
            // custodian's quorum is not spent on the recovery's leftovers.
            Err(e) if e.is_loss() => {
                tracing::info!(error = %e, "the module or token was not ready at login; initialising it again");
                self.reselect()?;
                self.open_live(pin)?
            }
            other => other?,
        };
        *live = Some(opened);
        *self.relogin.locked() = Some(pin.duplicate_for_relogin());
        Ok(())
    }

    /// [`Hsm::logout`].
    pub(super) fn logout_now(&self) {
        let _transition = self.transitions.locked();
        // Forget the re-login PIN first: nothing may log in again.
        drop(self.relogin.locked().take());
        self.activated.locked().clear();
        *self.lost.write_locked() = None;
        let taken = self.live.write_locked().take();
        if let Some(live) = taken {
            {
                let login = live.login.locked();
                let copies: Vec<ObjectHandle> = live
                    .handles
                    .read_locked()
                    .values()
                    .filter_map(|h| h.copy)
                    .collect();
                for c in copies {
                    let _ = login.destroy_object(c);
                }
                let _ = login.logout();
            }
            // Sessions close when the last in-flight operation lets go.
            drop(live);
        }
    }

    /// [`Hsm::verify_pins`].
    pub(super) fn verify_pins_now(&self, user: &Pin, so: &Pin) -> HsmResult<()> {
        if self.is_logged_in() {
            return Err(HsmError::Unexpected(
                "PINs are checked only while logged out".into(),
            ));
        }
        let s = self.ctx.open_rw_session(self.slot()).map_err(ck)?;
        s.login(UserType::So, Some(&so.to_auth_pin()))
            .map_err(|e| pin_err(e, "so"))?;
        s.logout().map_err(ck)?;
        s.login(UserType::User, Some(&user.to_auth_pin()))
            .map_err(|e| pin_err(e, "user"))?;
        s.logout().map_err(ck)?;
        Ok(())
    }

    /// [`Hsm::change_pins`].
    pub(super) fn change_pins_now(
        &self,
        user_old: &Pin,
        user_new: &Pin,
        so_old: &Pin,
        so_new: &Pin,
    ) -> HsmResult<()> {
        if self.is_logged_in() {
            return Err(HsmError::Unexpected(
                "PINs change only while logged out".into(),
            ));
        }
        let s = self.ctx.open_rw_session(self.slot()).map_err(ck)?;
        // Check both old PINs before changing anything.
        s.login(UserType::So, Some(&so_old.to_auth_pin()))
            .map_err(|e| pin_err(e, "so"))?;
        s.logout().map_err(ck)?;
        s.login(UserType::User, Some(&user_old.to_auth_pin()))
            .map_err(|e| pin_err(e, "user"))?;
        s.set_pin(&user_old.to_auth_pin(), &user_new.to_auth_pin())
            .map_err(ck)?;
        s.logout().map_err(ck)?;
        let so_change = (|| {
            s.login(UserType::So, Some(&so_old.to_auth_pin()))
                .map_err(|e| pin_err(e, "so"))?;
            s.set_pin(&so_old.to_auth_pin(), &so_new.to_auth_pin())
                .map_err(ck)?;
            s.logout().map_err(ck)
        })();
        if let Err(e) = so_change {
            // Put the user PIN back so the old shares still open the token.
            let _ = s.logout();
            if s.login(UserType::User, Some(&user_new.to_auth_pin()))
                .is_ok()
            {
                let _ = s.set_pin(&user_new.to_auth_pin(), &user_old.to_auth_pin());
                let _ = s.logout();
            }
            return Err(e);
        }
        Ok(())
    }
}
