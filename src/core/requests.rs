//! The request and answer types of the data path (no gRPC in them).

use super::*;

/// Decides, per item, whether the caller may use `key` with this context;
/// `Ok(true)` when allowed only through a break-glass grant.
pub type Gate<'a> =
    &'a (dyn Fn(&str, &BTreeMap<String, String>) -> Result<bool, crate::policy::Denied> + Sync);

/// One item's outcome, with what the audit log records about it.
pub struct Item<T> {
    pub key: Option<String>,
    pub version: Option<u32>,
    pub break_glass: bool,
    pub result: CoreResult<T>,
}

/// One GenerateDataKey request.
pub struct GenerateRequest {
    pub key: String,
    pub context: HashMap<String, String>,
}

/// A fresh data key: plaintext (unless it was not asked for) and wrapped.
pub struct GeneratedKey {
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub plaintext: Option<DataKey>,
    pub blob: Vec<u8>,
}

/// One Decrypt request.
pub struct DecryptRequest {
    pub blob: Vec<u8>,
    pub context: HashMap<String, String>,
    /// When set, the blob must be under this key.
    pub key: Option<String>,
}

pub struct Decrypted {
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub plaintext: Plaintext,
}

/// What a blob opens to.
pub enum Plaintext {
    /// A format-1 blob: a 32-byte data key.
    DataKey(DataKey),
    /// A format-2 blob: an Encrypt payload.
    Payload(zeroize::Zeroizing<Vec<u8>>),
}

impl Plaintext {
    pub fn expose(&self) -> &[u8] {
        match self {
            Plaintext::DataKey(k) => k.expose(),
            Plaintext::Payload(p) => p,
        }
    }
}

/// One Encrypt request: a payload of at most 4096 bytes.
pub struct EncryptRequest {
    pub key: String,
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    pub context: HashMap<String, String>,
}

pub struct Encrypted {
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub blob: Vec<u8>,
}

/// Decides whether the caller may MAC with `key`; `Ok(true)` when allowed
/// only through a break-glass grant.
pub type MacGate<'a> = &'a (dyn Fn(&str) -> Result<bool, crate::policy::Denied> + Sync);

/// One GenerateMac (or VerifyMac, with `mac`) request.
pub struct MacRequest {
    pub key: String,
    pub data: zeroize::Zeroizing<Vec<u8>>,
    /// None: the newest version.
    pub version: Option<u32>,
    /// VerifyMac: the MAC to check.
    pub mac: Option<Vec<u8>>,
}

pub struct MacOutput {
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub mac: [u8; crate::hsm::MAC_LEN],
    /// VerifyMac: whether the given MAC matched (in constant time).
    pub valid: bool,
}

/// One ReEncrypt request.
pub struct ReEncryptRequest {
    pub blob: Vec<u8>,
    pub context: HashMap<String, String>,
    /// None: the blob's own key.
    pub destination_key: Option<String>,
    /// None: keep the source context.
    pub destination_context: Option<HashMap<String, String>>,
}

pub struct ReEncrypted {
    pub source_key: String,
    pub source_version: u32,
    pub key: String,
    pub key_id: String,
    pub key_version: u32,
    pub blob: Vec<u8>,
}
