//! The `Hsm` contract (src/hsm/contract.rs), the same suite the in-memory
//! HSM passes, on the real PKCS#11 implementation against the token under
//! test: SoftHSM, or Kryoptic when `scripts/kryoptic.sh` runs this.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use keywarden::config::TokenSelector;
use keywarden::hsm::pkcs11::Pkcs11Hsm;
use keywarden::hsm::profile::{HsmProfile, KRYOPTIC_PROFILE, SOFTHSM2_PROFILE};
use keywarden::secret::Pin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pkcs11_hsm_meets_the_contract_on_the_token_under_test() {
    // A dev daemon makes and initialises a fresh token, then lets it go.
    let mut d = Daemon::builder().start().await;
    let share = d.dev_share.clone().unwrap();
    let user = d.derive_pin(&[&share], false);
    let so = d.derive_pin(&[&share], true);
    d.stop();
    let (var, conf) = d.token_conf();
    // This test binary has no other test: the variable is read once, when
    // the module initialises.
    std::env::set_var(var, &conf);
    let profile = HsmProfile::parse(if test_token() == "kryoptic" {
        KRYOPTIC_PROFILE
    } else {
        SOFTHSM2_PROFILE
    })
    .unwrap();
    let module = token_module();
    tokio::task::spawn_blocking(move || {
        let hsm = Pkcs11Hsm::connect(
            std::path::Path::new(&module),
            &TokenSelector::Label("keywarden-dev".into()),
            profile,
            2,
        )
        .unwrap();
        keywarden::hsm::contract::check(
            &hsm,
            &Pin::from_bytes(user.as_bytes()).unwrap(),
            &Pin::from_bytes(so.as_bytes()).unwrap(),
        );
    })
    .await
    .unwrap();
}
