//! `keywarden hsm check`: probes a token against a profile before an
//! administrator trusts it. Every step uses the same code as the daemon.

use std::path::PathBuf;
use std::sync::Arc;

use keywarden::config::TokenSelector;
use keywarden::hsm::pkcs11::Pkcs11Hsm;
use keywarden::hsm::profile::{HsmProfile, ProfileError};
use keywarden::hsm::{Hsm, HsmError, HsmKeyId, KeyAttributes, UnwrapItem};
use keywarden::secret::{Pin, SecretError};

/// One line of the report.
pub struct CheckResult {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Why one check failed: the detail its line shows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("none of {0:?} exists")]
    NoModule(Vec<PathBuf>),
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("{0}")]
    MechanismList(Arc<cryptoki::error::Error>),
    #[error("missing")]
    MechanismMissing,
    #[error(transparent)]
    Pin(#[from] SecretError),
    /// The test key's attributes are not the ones the daemon relies on.
    #[error("{0:?}")]
    KeyAttributes(KeyAttributes),
    #[error("no key")]
    NoWrappedKey,
    #[error("no result")]
    NoResult,
    #[error("round trip returned other bytes")]
    RoundTripMismatch,
    #[error("a flipped bit gave {0}: add its code to gcm_tag_failure_codes")]
    FlipNotATagFailure(HsmError),
    #[error("a flipped bit decrypted")]
    FlipDecrypted,
}

fn push(out: &mut Vec<CheckResult>, check: &'static str, r: Result<String, CheckError>) -> bool {
    let ok = r.is_ok();
    out.push(CheckResult {
        check,
        ok,
        detail: r.unwrap_or_else(|e| e.to_string()),
    });
    ok
}

/// What `keywarden hsm check` probes: a profile, the token it selects, and
/// the PIN files to log in with.
pub struct Probe {
    pub profile: PathBuf,
    /// The PKCS#11 module, when the profile's paths do not find it.
    pub module: Option<PathBuf>,
    pub token: TokenSelector,
    pub pin_file: PathBuf,
    /// Also check the SO login and C_SetPIN.
    pub so_pin_file: Option<PathBuf>,
}

/// Runs the checks; stops at the first one the others depend on.
pub fn run(probe: &Probe) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let Some((hsm, copies)) = connect(probe, &mut out) else {
        return out;
    };
    check_mechanisms(&hsm, &mut out);
    if !login(&hsm, probe, &mut out) {
        return out;
    }
    let mut raw = [0u8; 16];
    let id = match hsm.random(&mut raw) {
        Ok(()) => HsmKeyId(raw),
        Err(e) => {
            push(&mut out, "random", Err(e.into()));
            hsm.logout();
            return out;
        }
    };
    check_aes_key(&hsm, &id, copies, &mut out);
    check_hmac_key(&hsm, &mut out);
    push(
        &mut out,
        "ECDSA P-256 audit signing",
        hsm.ensure_signing_key()
            .and_then(|_| hsm.sign_digest(&[7u8; 32]))
            .map(|s| format!("{}-byte signature", s.len()))
            .map_err(CheckError::from),
    );
    hsm.logout();
    out
}

/// The profile, its module and the token: the HSM, and whether the
/// profile makes session copies of keys; `None` when one is missing.
fn connect(probe: &Probe, out: &mut Vec<CheckResult>) -> Option<(Pkcs11Hsm, bool)> {
    let profile = match HsmProfile::load(&probe.profile) {
        Ok(p) => p,
        Err(e) => {
            push(out, "profile parses", Err(e.into()));
            return None;
        }
    };
    push(out, "profile parses", Ok(profile.name.clone()));
    let module = match probe.module.clone().or_else(|| profile.find_module()) {
        Some(m) => m,
        None => {
            push(
                out,
                "module present",
                Err(CheckError::NoModule(profile.module_paths.clone())),
            );
            return None;
        }
    };
    push(out, "module present", Ok(module.display().to_string()));
    let copies = profile.session_key_copies;
    let hsm = match Pkcs11Hsm::connect(&module, &probe.token, profile, 2) {
        Ok(h) => h,
        Err(e) => {
            push(out, "token found", Err(e.into()));
            return None;
        }
    };
    let t = hsm.token().clone();
    push(
        out,
        "token found",
        Ok(format!(
            "{} (serial {}, {} {})",
            t.label, t.serial, t.manufacturer, t.model
        )),
    );
    Some((hsm, copies))
}

/// The mechanisms the daemon uses, each on its own line.
fn check_mechanisms(hsm: &Pkcs11Hsm, out: &mut Vec<CheckResult>) {
    let mechs = hsm.mechanism_names().map_err(Arc::new);
    for (check, want) in [
        ("mechanism CKM_AES_KEY_GEN", "AES_KEY_GEN"),
        ("mechanism CKM_AES_GCM", "AES_GCM"),
        ("mechanism CKM_EC_KEY_PAIR_GEN", "EC_KEY_PAIR_GEN"),
        ("mechanism CKM_ECDSA", "ECDSA"),
        (
            "mechanism CKM_GENERIC_SECRET_KEY_GEN",
            "GENERIC_SECRET_KEY_GEN",
        ),
        ("mechanism CKM_SHA256_HMAC", "SHA256_HMAC"),
    ] {
        let r = match &mechs {
            Ok(list) if list.iter().any(|m| m.contains(want)) => Ok("present".into()),
            Ok(_) => Err(CheckError::MechanismMissing),
            Err(e) => Err(CheckError::MechanismList(e.clone())),
        };
        push(out, check, r);
    }
}

/// The SO login and C_SetPIN (with an SO PIN file), then the user login;
/// false when the user cannot log in.
fn login(hsm: &Pkcs11Hsm, probe: &Probe, out: &mut Vec<CheckResult>) -> bool {
    let pin = match Pin::from_file(&probe.pin_file) {
        Ok(p) => p,
        Err(e) => {
            push(out, "user login", Err(e.into()));
            return false;
        }
    };
    if let Some(so_file) = &probe.so_pin_file {
        // What init and the first unseal need: an SO login and C_SetPIN
        // for both PINs. Each PIN is "changed" to its current value, so a
        // failure half-way leaves nothing changed.
        let r = Pin::from_file(so_file)
            .map_err(CheckError::from)
            .and_then(|so| {
                hsm.change_pins(&pin, &pin, &so, &so)
                    .map(|()| "SO login ok; C_SetPIN accepted for the user and the SO PIN (each set to its current value)".into())
                    .map_err(CheckError::from)
            });
        push(out, "SO login and C_SetPIN", r);
    }
    push(
        out,
        "user login",
        hsm.login(&pin)
            .map(|_| "ok".into())
            .map_err(CheckError::from),
    )
}

/// An AES key generated inside: its attributes, a session copy (when the
/// profile makes them), AES-GCM both ways, and its destruction.
fn check_aes_key(hsm: &Pkcs11Hsm, id: &HsmKeyId, copies: bool, out: &mut Vec<CheckResult>) {
    let gen = hsm.generate_cmk(
        id,
        &format!("keywarden-check/{}", id.to_hex()),
        keywarden::hsm::KeyKind::Aes,
    );
    if !push(
        out,
        "generate AES-256 key",
        gen.map(|_| "token object".into()).map_err(CheckError::from),
    ) {
        return;
    }
    let attrs = hsm.key_attributes(id);
    push(
        out,
        "key sensitive, never extractable",
        match attrs {
            Ok(a)
                if a.sensitive
                    && a.always_sensitive
                    && !a.extractable
                    && a.never_extractable
                    && !a.wrap
                    && !a.unwrap =>
            {
                Ok("CKA_SENSITIVE, CKA_NEVER_EXTRACTABLE, no wrap/unwrap".into())
            }
            Ok(a) => Err(CheckError::KeyAttributes(a)),
            Err(e) => Err(e.into()),
        },
    );
    if copies {
        push(
            out,
            "session copy",
            hsm.activate(id)
                .map(|_| "CKA_TOKEN=false copy made".into())
                .map_err(CheckError::from),
        );
    }
    push(out, "AES-GCM wrap and unwrap", aes_round_trip(hsm, *id));
    push(
        out,
        "destroy test key",
        hsm.destroy_cmk(id)
            .map(|_| "removed".into())
            .map_err(CheckError::from),
    );
}

/// A new key wrapped and unwrapped under `id`; one flipped bit must fail
/// as a bad tag.
fn aes_round_trip(hsm: &Pkcs11Hsm, id: HsmKeyId) -> Result<String, CheckError> {
    let aad = b"keywarden hsm check";
    let mut w = hsm.wrap_new_keys(&id, &[aad])?;
    let w = w.pop().ok_or(CheckError::NoWrappedKey)?;
    let back = hsm
        .unwrap_many(&[UnwrapItem {
            key: id,
            iv: w.iv,
            aad,
            ciphertext: &w.ciphertext,
        }])
        .pop()
        .ok_or(CheckError::NoResult)??;
    if back.expose() != w.plaintext.expose() {
        return Err(CheckError::RoundTripMismatch);
    }
    let mut bad = w.ciphertext.clone();
    bad[0] ^= 1;
    match hsm
        .unwrap_many(&[UnwrapItem {
            key: id,
            iv: w.iv,
            aad,
            ciphertext: &bad,
        }])
        .pop()
    {
        Some(Err(HsmError::AuthenticationFailed)) => {
            Ok("round trip ok; a flipped bit is reported as a bad tag".to_string())
        }
        Some(Err(e)) => Err(CheckError::FlipNotATagFailure(e)),
        _ => Err(CheckError::FlipDecrypted),
    }
}

/// An HMAC key: generated inside, sign and verify only, and MACs.
fn check_hmac_key(hsm: &Pkcs11Hsm, out: &mut Vec<CheckResult>) {
    let mut raw = [0u8; 16];
    if hsm.random(&mut raw).is_err() {
        return;
    }
    let id = HsmKeyId(raw);
    let label = format!("keywarden-check/{}", id.to_hex());
    let made = hsm.generate_cmk(&id, &label, keywarden::hsm::KeyKind::Hmac);
    if !push(
        out,
        "generate HMAC-SHA256 key",
        made.map(|_| "token object".into())
            .map_err(CheckError::from),
    ) {
        return;
    }
    let r = hsm
        .key_attributes(&id)
        .map_err(CheckError::from)
        .and_then(|a| {
            if a.sensitive && a.never_extractable && !a.extractable && a.sign && !a.encrypt {
                Ok(())
            } else {
                Err(CheckError::KeyAttributes(a))
            }
        })
        .and_then(|()| {
            let m = hsm.mac_many(&id, &[b"keywarden hsm check"])?;
            Ok(format!(
                "sign only; {}-byte MAC",
                m.first().map_or(0, |m| m.len())
            ))
        });
    push(out, "HMAC-SHA256", r);
    push(
        out,
        "destroy test HMAC key",
        hsm.destroy_cmk(&id)
            .map(|_| "removed".into())
            .map_err(CheckError::from),
    );
}
