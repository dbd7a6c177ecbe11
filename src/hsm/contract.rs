//! The `Hsm` contract, as one suite every implementation must pass: the
//! in-memory HSM (unit tests), and the PKCS#11 implementation on SoftHSM
//! and on Kryoptic (`tests/hsm_contract.rs`, which `scripts/kryoptic.sh`
//! runs on Kryoptic too). Test builds only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::{Hsm, HsmError, HsmKeyId, KeyKind, UnwrapItem, IV_LEN};
use crate::secret::Pin;

/// Runs the whole contract on a token that is not logged in, whose user
/// and SO PINs are `user` and `so`. Leaves it logged out. Creates one CMK
/// (destroyed again), a counter and the audit-signing key.
pub fn check(hsm: &dyn Hsm, user: &Pin, so: &Pin) {
    check_pins(hsm, user, so);
    hsm.login(user).expect("login");
    assert!(hsm.is_logged_in());
    hsm.health().expect("a healthy token");

    // Random bytes.
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    hsm.random(&mut a).unwrap();
    hsm.random(&mut b).unwrap();
    assert_ne!(a, b);

    // A CMK: generated inside, sensitive and never extractable.
    let id = HsmKeyId(*b"contract-test-01");
    hsm.generate_cmk(&id, "keywarden:contract/v1", KeyKind::Aes)
        .unwrap();
    hsm.activate(&id).unwrap();
    assert!(hsm.list_cmks().unwrap().iter().any(|o| o.id == id));
    let attrs = hsm.key_attributes(&id).unwrap();
    assert!(
        attrs.sensitive && attrs.never_extractable && !attrs.extractable,
        "{attrs:?}"
    );
    assert!(attrs.encrypt && attrs.decrypt && !attrs.sign && !attrs.verify);

    // Wrap fresh keys under two AADs; each unwraps only with its own AAD.
    let aads: [&[u8]; 2] = [b"aad-one", b"aad-two"];
    let wrapped = hsm.wrap_new_keys(&id, &aads).unwrap();
    assert_eq!(wrapped.len(), 2);
    assert_ne!(wrapped[0].plaintext.expose(), wrapped[1].plaintext.expose());
    let item = |aad: &'static [u8],
                ct: &[u8],
                iv: [u8; IV_LEN]|
     -> (Vec<u8>, [u8; IV_LEN], &'static [u8]) { (ct.to_vec(), iv, aad) };
    let run = |items: &[(Vec<u8>, [u8; IV_LEN], &'static [u8])]| {
        let list: Vec<UnwrapItem<'_>> = items
            .iter()
            .map(|(ct, iv, aad)| UnwrapItem {
                key: id,
                iv: *iv,
                aad,
                ciphertext: ct,
            })
            .collect();
        hsm.unwrap_many(&list)
    };
    let mut altered = wrapped[0].ciphertext.clone();
    altered[0] ^= 1;
    let out = run(&[
        item(b"aad-one", &wrapped[0].ciphertext, wrapped[0].iv),
        item(b"aad-two", &wrapped[1].ciphertext, wrapped[1].iv),
        item(b"aad-two", &wrapped[0].ciphertext, wrapped[0].iv),
        item(b"aad-one", &altered, wrapped[0].iv),
    ]);
    assert_eq!(out.len(), 4);
    assert_eq!(
        out[0].as_ref().unwrap().expose(),
        wrapped[0].plaintext.expose()
    );
    assert_eq!(
        out[1].as_ref().unwrap().expose(),
        wrapped[1].plaintext.expose()
    );
    assert!(
        matches!(out[2], Err(HsmError::AuthenticationFailed)),
        "wrong AAD"
    );
    assert!(
        matches!(out[3], Err(HsmError::AuthenticationFailed)),
        "altered ciphertext"
    );

    // Rewrap an existing key; encrypt payloads of other lengths (Encrypt).
    let again = hsm
        .encrypt_many(&id, &[(b"aad-three", &[7u8; 32]), (b"aad-four", b"")])
        .unwrap();
    let back = run(&[item(b"aad-three", &again[0].1, again[0].0)]);
    assert_eq!(back[0].as_ref().unwrap().expose(), &[7u8; 32]);
    let payload = vec![0x42u8; 4096];
    let sealed = hsm
        .encrypt_many(&id, &[(b"aad-five", &payload), (b"aad-six", b"")])
        .unwrap();
    let opened = hsm.decrypt_many(&[
        UnwrapItem {
            key: id,
            iv: sealed[0].0,
            aad: b"aad-five",
            ciphertext: &sealed[0].1,
        },
        UnwrapItem {
            key: id,
            iv: sealed[1].0,
            aad: b"aad-six",
            ciphertext: &sealed[1].1,
        },
        UnwrapItem {
            key: id,
            iv: sealed[1].0,
            aad: b"aad-five",
            ciphertext: &sealed[1].1,
        },
    ]);
    assert_eq!(&opened[0].as_ref().unwrap()[..], &payload[..]);
    assert!(opened[1].as_ref().unwrap().is_empty());
    assert!(matches!(opened[2], Err(HsmError::AuthenticationFailed)));
    // An AES key makes no MACs.
    assert!(hsm.mac_many(&id, &[b"x"]).is_err());

    check_hmac_key(hsm);

    check_counter(hsm);

    check_signing_key(hsm);

    // Destroyed: gone from the token, nothing unwraps under it.
    hsm.destroy_cmk(&id).unwrap();
    assert!(!hsm.list_cmks().unwrap().iter().any(|o| o.id == id));
    let gone = run(&[item(b"aad-one", &wrapped[0].ciphertext, wrapped[0].iv)]);
    assert!(gone[0].is_err());

    // Logged out: key operations refused.
    hsm.logout();
    assert!(!hsm.is_logged_in());
    assert!(hsm.wrap_new_keys(&id, &aads).is_err());
}

/// PINs: checked without logging in; a wrong one is named and refused.
fn check_pins(hsm: &dyn Hsm, user: &Pin, so: &Pin) {
    let wrong = Pin::from_bytes(b"not-the-pin").unwrap();
    // PINs: checked without logging in; a wrong one is named.
    hsm.verify_pins(user, so).expect("the right PINs verify");
    assert!(matches!(
        hsm.verify_pins(&wrong, so),
        Err(HsmError::PinIncorrect { role: "user" })
    ));
    assert!(!hsm.is_logged_in());
    assert!(matches!(
        hsm.login(&wrong),
        Err(HsmError::PinIncorrect { .. })
    ));
}

/// An HMAC key: generated inside, sign/verify only, deterministic per key.
fn check_hmac_key(hsm: &dyn Hsm) {
    // An HMAC key: generated inside, sign/verify only; HMAC-SHA256 that is
    // deterministic per key and differs between keys; it encrypts nothing.
    let mac_id = HsmKeyId(*b"contract-test-02");
    let mac_id2 = HsmKeyId(*b"contract-test-03");
    for m in [mac_id, mac_id2] {
        hsm.generate_cmk(&m, "keywarden:contract-mac/v1", KeyKind::Hmac)
            .unwrap();
        hsm.activate(&m).unwrap();
    }
    let attrs = hsm.key_attributes(&mac_id).unwrap();
    assert!(
        attrs.sensitive && attrs.never_extractable && !attrs.extractable,
        "{attrs:?}"
    );
    assert!(attrs.sign && attrs.verify && !attrs.encrypt && !attrs.decrypt);
    let macs = hsm
        .mac_many(&mac_id, &[b"MRN-0001", b"MRN-0002", b"MRN-0001", b""])
        .unwrap();
    assert_eq!(macs.len(), 4);
    assert_eq!(macs[0], macs[2]);
    assert_ne!(macs[0], macs[1]);
    assert_ne!(macs[0], hsm.mac_many(&mac_id2, &[b"MRN-0001"]).unwrap()[0]);
    assert!(hsm.encrypt_many(&mac_id, &[(b"a", b"b")]).is_err());
    assert!(hsm.wrap_new_keys(&mac_id, &[b"a"]).is_err());
    for m in [mac_id, mac_id2] {
        hsm.destroy_cmk(&m).unwrap();
    }
    assert!(hsm.mac_many(&mac_id, &[b"x"]).is_err());
}

/// A monotonic counter object: read back, advanced, never lowered.
fn check_counter(hsm: &dyn Hsm) {
    // A monotonic counter object.
    assert_eq!(
        hsm.read_counter("keywarden-contract-counter").unwrap(),
        None
    );
    hsm.write_counter("keywarden-contract-counter", 5).unwrap();
    assert_eq!(
        hsm.read_counter("keywarden-contract-counter").unwrap(),
        Some(5)
    );
    hsm.write_counter("keywarden-contract-counter", 6).unwrap();
    assert_eq!(
        hsm.read_counter("keywarden-contract-counter").unwrap(),
        Some(6)
    );
    // Never down.
    hsm.write_counter("keywarden-contract-counter", 4).unwrap();
    assert_eq!(
        hsm.read_counter("keywarden-contract-counter").unwrap(),
        Some(6)
    );
}

/// The audit-signing key: found again, not made twice; signatures verify.
fn check_signing_key(hsm: &dyn Hsm) {
    // The audit-signing key: found again, not made twice; signatures verify.
    let point = hsm.ensure_signing_key().unwrap();
    assert_eq!(point, hsm.ensure_signing_key().unwrap());
    assert_eq!(
        (point.len(), point[0]),
        (65, 0x04),
        "an uncompressed P-256 point"
    );
    let digest = [0x5au8; 32];
    let sig = hsm.sign_digest(&digest).unwrap();
    assert_eq!(sig.len(), 64);
    {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify_prehash(&digest, &sig)
            .expect("the signature verifies");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_memory_hsm_meets_the_contract() {
        let hsm = super::super::memory::MemoryHsm::new("user-pin-1", "so-pin-1");
        let user = crate::secret::Pin::from_bytes(b"user-pin-1").unwrap();
        let so = crate::secret::Pin::from_bytes(b"so-pin-1").unwrap();
        super::check(&hsm, &user, &so);
    }
}
