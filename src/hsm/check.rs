//! `keywarden hsm check`: probes a token against a profile before an
//! administrator trusts it. Every step uses the same code as the daemon.

use std::path::Path;

use super::pkcs11::Pkcs11Hsm;
use super::profile::HsmProfile;
use super::{Hsm, HsmError, HsmKeyId, UnwrapItem};
use crate::config::TokenSelector;
use crate::secret::Pin;

/// One line of the report.
pub struct CheckResult {
    pub check: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn push(out: &mut Vec<CheckResult>, check: &'static str, r: Result<String, String>) -> bool {
    let ok = r.is_ok();
    out.push(CheckResult {
        check,
        ok,
        detail: r.unwrap_or_else(|e| e),
    });
    ok
}

/// Runs the checks; stops at the first one the others depend on.
pub fn run(
    profile_path: &Path,
    module: Option<&Path>,
    token: &TokenSelector,
    pin_file: &Path,
    so_pin_file: Option<&Path>,
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let profile = match HsmProfile::load(profile_path) {
        Ok(p) => p,
        Err(e) => {
            push(&mut out, "profile parses", Err(e));
            return out;
        }
    };
    push(&mut out, "profile parses", Ok(profile.name.clone()));
    let module = match module
        .map(Path::to_path_buf)
        .or_else(|| profile.find_module())
    {
        Some(m) => m,
        None => {
            push(
                &mut out,
                "module present",
                Err(format!("none of {:?} exists", profile.module_paths)),
            );
            return out;
        }
    };
    push(&mut out, "module present", Ok(module.display().to_string()));
    let copies = profile.session_key_copies;
    let hsm = match Pkcs11Hsm::connect(&module, token, profile, 2) {
        Ok(h) => h,
        Err(e) => {
            push(&mut out, "token found", Err(e.to_string()));
            return out;
        }
    };
    let t = hsm.token().clone();
    push(
        &mut out,
        "token found",
        Ok(format!(
            "{} (serial {}, {} {})",
            t.label, t.serial, t.manufacturer, t.model
        )),
    );
    let mechs = hsm.mechanism_names();
    for (check, want) in [
        ("mechanism CKM_AES_KEY_GEN", "AES_KEY_GEN"),
        ("mechanism CKM_AES_GCM", "AES_GCM"),
        ("mechanism CKM_EC_KEY_PAIR_GEN", "EC_KEY_PAIR_GEN"),
        ("mechanism CKM_ECDSA", "ECDSA"),
    ] {
        let r = match &mechs {
            Ok(list) if list.iter().any(|m| m.contains(want)) => Ok("present".into()),
            Ok(_) => Err("missing".into()),
            Err(e) => Err(e.clone()),
        };
        push(&mut out, check, r);
    }
    let pin = match Pin::from_file(pin_file) {
        Ok(p) => p,
        Err(e) => {
            push(&mut out, "user login", Err(e));
            return out;
        }
    };
    if let Some(so_file) = so_pin_file {
        // What init and the first unseal need: an SO login and C_SetPIN
        // for both PINs. Each PIN is "changed" to its current value, so a
        // failure half-way leaves nothing changed.
        let r = Pin::from_file(so_file).and_then(|so| {
            hsm.change_pins(&pin, &pin, &so, &so)
                .map(|()| "SO login ok; C_SetPIN accepted for the user and the SO PIN (each set to its current value)".into())
                .map_err(|e| e.to_string())
        });
        push(&mut out, "SO login and C_SetPIN", r);
    }
    if !push(
        &mut out,
        "user login",
        hsm.login(&pin)
            .map(|_| "ok".into())
            .map_err(|e| e.to_string()),
    ) {
        return out;
    }
    let mut raw = [0u8; 16];
    let id = match hsm.random(&mut raw) {
        Ok(()) => HsmKeyId(raw),
        Err(e) => {
            push(&mut out, "random", Err(e.to_string()));
            hsm.logout();
            return out;
        }
    };
    let gen = hsm.generate_cmk(&id, &format!("keywarden-check/{}", id.to_hex()));
    if push(
        &mut out,
        "generate AES-256 key",
        gen.map(|_| "token object".into())
            .map_err(|e| e.to_string()),
    ) {
        let attrs = hsm.key_attributes(&id);
        push(
            &mut out,
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
                Ok(a) => Err(format!("{a:?}")),
                Err(e) => Err(e.to_string()),
            },
        );
        if copies {
            push(
                &mut out,
                "session copy",
                hsm.activate(&id)
                    .map(|_| "CKA_TOKEN=false copy made".into())
                    .map_err(|e| e.to_string()),
            );
        }
        let aad = b"keywarden hsm check";
        let rt = hsm
            .wrap_new_keys(&id, &[aad])
            .map_err(|e| e.to_string())
            .and_then(|mut w| {
                let w = w.pop().ok_or("no key")?;
                let back = hsm
                    .unwrap_many(&[UnwrapItem {
                        key: id,
                        iv: w.iv,
                        aad,
                        ciphertext: &w.ciphertext,
                    }])
                    .pop()
                    .ok_or("no result")?
                    .map_err(|e| e.to_string())?;
                if back.expose() != w.plaintext.expose() {
                    return Err("round trip returned other bytes".to_string());
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
                    Some(Err(e)) => Err(format!(
                        "a flipped bit gave {e}: add its code to gcm_tag_failure_codes"
                    )),
                    _ => Err("a flipped bit decrypted".to_string()),
                }
            });
        push(&mut out, "AES-GCM wrap and unwrap", rt);
        push(
            &mut out,
            "destroy test key",
            hsm.destroy_cmk(&id)
                .map(|_| "removed".into())
                .map_err(|e| e.to_string()),
        );
    }
    push(
        &mut out,
        "ECDSA P-256 audit signing",
        hsm.ensure_signing_key()
            .and_then(|_| hsm.sign_digest(&[7u8; 32]))
            .map(|s| format!("{}-byte signature", s.len()))
            .map_err(|e| e.to_string()),
    );
    hsm.logout();
    out
}
