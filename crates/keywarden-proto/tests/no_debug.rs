//! Messages that carry a plaintext data key, a PIN or a share implement no
//! `Debug`: `format!("{:?}")` of them does not compile, so no log line or
//! panic message can print one. Checked at compile time, the way
//! `static_assertions::assert_not_impl_any!` does it: if `T: Debug`, the
//! second impl applies too and the call below is ambiguous.

use keywarden_proto as p;

trait AmbiguousIfDebug<A> {
    fn check() {}
}
impl<T: ?Sized> AmbiguousIfDebug<()> for T {}
#[allow(dead_code)]
struct IsDebug;
impl<T: ?Sized + std::fmt::Debug> AmbiguousIfDebug<IsDebug> for T {}

macro_rules! assert_no_debug {
    ($($t:ty),* $(,)?) => { $( <$t as AmbiguousIfDebug<_>>::check(); )* };
}

#[test]
fn secret_bearing_messages_have_no_debug() {
    assert_no_debug!(
        p::GenerateDataKeyResponse,
        p::DecryptResponse,
        p::BatchGenerateDataKeyResult,
        p::BatchGenerateDataKeyResponse,
        p::BatchDecryptResult,
        p::BatchDecryptResponse,
        p::IssuedShare,
        p::InitRequest,
        p::InitResponse,
        p::UnsealRequest,
        p::RekeyShareRequest,
        p::RekeySubmitResponse,
        p::EncryptRequest,
        p::BatchEncryptRequest,
        p::GenerateMacRequest,
        p::VerifyMacRequest,
        p::BatchGenerateMacRequest,
    );
}

#[test]
fn the_rest_keep_debug() {
    // Messages without secrets still print, for diagnostics.
    let r = p::GenerateDataKeyRequest {
        key: "clinic".into(),
        encryption_context: Default::default(),
    };
    assert!(format!("{r:?}").contains("clinic"));
}
