//! The request and answer types of the data path (no gRPC in them).

use super::*;

/// Decides, per item, whether the caller may use `key` with this context;
/// `Ok(true)` when allowed only through a break-glass grant.
pub type Gate<'a> =
    &'a (dyn Fn(&str, &BTreeMap<String, String>) -> Result<bool, crate::policy::Denied> + Sync);

/// One item's outcome, with what the audit log records about it.
pub struct Item<T> {
    /// The key the item named or its blob resolved to; `None` when it
    /// failed before one was known (a malformed name or blob).
    pub key: Option<String>,
    /// The key version it used; `None` when it failed before one was
    /// chosen.
    pub version: Option<u32>,
    /// Whether only a break-glass grant allowed it.
    pub break_glass: bool,
    /// The item's own outcome.
    pub result: CoreResult<T>,
}

/// One GenerateDataKey request.
pub struct GenerateRequest {
    /// The AES key to wrap the data key under.
    pub key: String,
    /// The encryption context, bound to the blob as associated data.
    pub context: HashMap<String, String>,
}

/// A fresh data key: plaintext (unless it was not asked for) and wrapped.
pub struct GeneratedKey {
    /// The wrapping key's name.
    pub key: String,
    /// The wrapping key's id, as a hyphenated UUID.
    pub key_id: String,
    /// The version that wrapped it.
    pub key_version: u32,
    /// The 32-byte data key; `None` when the caller asked for the blob only.
    pub plaintext: Option<DataKey>,
    /// The wrapped data key, a format-1 blob.
    pub blob: Vec<u8>,
}

/// One Decrypt request.
pub struct DecryptRequest {
    /// The blob, as GenerateDataKey or Encrypt returned it.
    pub blob: Vec<u8>,
    /// The encryption context the blob was made with.
    pub context: HashMap<String, String>,
    /// When set, the blob must be under this key.
    pub key: Option<String>,
}

/// An opened blob.
pub struct Decrypted {
    /// The name of the key the blob was under.
    pub key: String,
    /// That key's id, as a hyphenated UUID.
    pub key_id: String,
    /// The version the blob was under.
    pub key_version: u32,
    /// What the blob held.
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
    /// The plaintext bytes, whichever kind; secret: never log them.
    pub fn expose(&self) -> &[u8] {
        match self {
            Plaintext::DataKey(k) => k.expose(),
            Plaintext::Payload(p) => p,
        }
    }
}

/// One Encrypt request: a payload of at most 4096 bytes.
pub struct EncryptRequest {
    /// The AES key to encrypt under.
    pub key: String,
    /// The payload, zeroed on drop.
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    /// The encryption context, bound to the blob as associated data.
    pub context: HashMap<String, String>,
}

/// An encrypted payload.
pub struct Encrypted {
    /// The key's name.
    pub key: String,
    /// The key's id, as a hyphenated UUID.
    pub key_id: String,
    /// The version it was encrypted under (the key's current one).
    pub key_version: u32,
    /// The format-2 blob.
    pub blob: Vec<u8>,
}

/// Decides whether the caller may MAC with `key`; `Ok(true)` when allowed
/// only through a break-glass grant.
pub type MacGate<'a> = &'a (dyn Fn(&str) -> Result<bool, crate::policy::Denied> + Sync);

/// One GenerateMac (or VerifyMac, with `mac`) request.
pub struct MacRequest {
    /// The HMAC key.
    pub key: String,
    /// The data to MAC, zeroed on drop.
    pub data: zeroize::Zeroizing<Vec<u8>>,
    /// None: the newest version.
    pub version: Option<u32>,
    /// VerifyMac: the MAC to check.
    pub mac: Option<Vec<u8>>,
}

/// A MAC computed (GenerateMac) or checked (VerifyMac).
pub struct MacOutput {
    /// The key's name.
    pub key: String,
    /// The key's id, as a hyphenated UUID.
    pub key_id: String,
    /// The version that computed it.
    pub key_version: u32,
    /// The MAC the HSM computed over the data (for VerifyMac too).
    pub mac: [u8; crate::hsm::MAC_LEN],
    /// VerifyMac: whether the given MAC matched (in constant time).
    pub valid: bool,
}

/// One ReEncrypt request.
pub struct ReEncryptRequest {
    /// The blob to open.
    pub blob: Vec<u8>,
    /// The encryption context it was made with.
    pub context: HashMap<String, String>,
    /// None: the blob's own key.
    pub destination_key: Option<String>,
    /// None: keep the source context.
    pub destination_context: Option<HashMap<String, String>>,
}

/// A blob rewrapped under a destination key's current version.
pub struct ReEncrypted {
    /// The key the blob was under.
    pub source_key: String,
    /// The version it was under.
    pub source_version: u32,
    /// The destination key's name.
    pub key: String,
    /// The destination key's id, as a hyphenated UUID.
    pub key_id: String,
    /// The destination version (the destination key's current one).
    pub key_version: u32,
    /// The new blob, in the source blob's format.
    pub blob: Vec<u8>,
}
