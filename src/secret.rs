//! Secret-holding newtypes. None of them implements `Debug`, `Clone`,
//! `Display` or `Serialize`; each wipes its memory on drop and exposes its
//! bytes at one edge only.

use std::io::Read;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length of a data key in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;

/// A plaintext data key. Lives only as long as one request needs it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; DATA_KEY_LEN]);

impl DataKey {
    /// Takes ownership of the bytes; the caller's copy is wiped.
    pub fn from_bytes(bytes: &mut [u8; DATA_KEY_LEN]) -> Self {
        let key = DataKey(*bytes);
        bytes.zeroize();
        key
    }

    /// Builds a key from a slice of exactly 32 bytes (e.g. what the HSM
    /// returned); `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut buf = [0u8; DATA_KEY_LEN];
        if bytes.len() != DATA_KEY_LEN {
            return None;
        }
        buf.copy_from_slice(bytes);
        Some(Self::from_bytes(&mut buf))
    }

    /// The one edge where the bytes leave: the HSM call and the protobuf
    /// field being written.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

/// Why a PIN could not be read or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The PIN file could not be read.
    #[error("pin file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What reading it failed with.
        source: std::io::Error,
    },
    /// The PIN file's permissions let other users read it.
    #[error("pin file {} is readable by other users (mode {mode:o}); chmod 0600 or 0640", path.display())]
    ReadableByOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits (`mode & 0o777`).
        mode: u32,
    },
    /// The file's content is not a usable PIN.
    #[error("pin file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with the content (never the content itself).
        reason: &'static str,
    },
    /// The OS random generator failed.
    #[error("random: {0}")]
    Random(getrandom::Error),
}

/// The OS random generator failed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("OS random generator: {0}")]
pub struct RandomError(pub getrandom::Error);

/// A PKCS#11 user PIN. Read from a file or a systemd credential, never from
/// the command line or the config file itself.
pub struct Pin(SecretString);

impl Pin {
    /// Reads a PIN from a file; one trailing newline is removed. Refuses files
    /// that other users may read, and empty PINs.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.permissions().mode() & 0o007 != 0 {
            return Err(SecretError::ReadableByOthers {
                path: path.to_path_buf(),
                mode: meta.permissions().mode() & 0o777,
            });
        }
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut raw = Zeroizing::new(Vec::new());
        file.read_to_end(&mut raw).map_err(io)?;
        Self::from_bytes(&raw).map_err(|reason| SecretError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// A PIN from bytes (one trailing newline removed).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, &'static str> {
        let mut end = raw.len();
        if end > 0 && raw[end - 1] == b'\n' {
            end -= 1;
        }
        if end > 0 && raw[end - 1] == b'\r' {
            end -= 1;
        }
        let text = std::str::from_utf8(&raw[..end]).map_err(|_| "PIN is not UTF-8")?;
        if text.is_empty() {
            return Err("PIN is empty");
        }
        if text.len() > 255 {
            return Err("PIN is longer than 255 bytes");
        }
        Ok(Pin(SecretString::from(text)))
    }

    /// A PIN from text the daemon derived itself.
    pub(crate) fn from_text(text: &str) -> Self {
        Pin(SecretString::from(text))
    }

    /// A second copy, for the one holder that needs it: the PKCS#11 layer
    /// keeps the user PIN while unsealed so it can log in again after the
    /// token comes back (docs/THREAT_MODEL.md). Deliberately not `Clone`.
    pub(crate) fn duplicate_for_relogin(&self) -> Self {
        Pin(SecretString::from(self.0.expose_secret()))
    }

    /// The PIN as text: only for `keywarden operator derive-pin`, the
    /// custodians' offline recovery tool, which prints it.
    pub fn expose_text(&self) -> &str {
        self.0.expose_secret()
    }

    #[cfg(test)]
    pub(crate) fn expose_for_test(&self) -> &str {
        self.0.expose_secret()
    }

    /// A fresh random PIN (hex of 16 random bytes), for dev tokens.
    pub fn random() -> Result<Self, SecretError> {
        let mut bytes = Zeroizing::new([0u8; 16]);
        getrandom::fill(bytes.as_mut()).map_err(SecretError::Random)?;
        let mut hex = String::with_capacity(32);
        for b in bytes.iter() {
            hex.push_str(&format!("{b:02x}"));
        }
        Ok(Pin(SecretString::from(hex)))
    }

    /// Writes the PIN to a new file with mode 0600.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(self.0.expose_secret().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    }

    /// The PIN as the `cryptoki` secret type: the FFI edge.
    pub fn to_auth_pin(&self) -> cryptoki::types::AuthPin {
        cryptoki::types::AuthPin::from(self.0.expose_secret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_strips_one_newline_and_rejects_empty() {
        let pin = Pin::from_bytes(b"1234\n").map_err(|e| e.to_string());
        assert_eq!(
            pin.map(|p| p.0.expose_secret().to_string()).as_deref(),
            Ok("1234")
        );
        assert!(Pin::from_bytes(b"\n").is_err());
        assert!(Pin::from_bytes(b"").is_err());
        assert!(Pin::from_bytes(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn data_key_from_slice_checks_length() {
        assert!(DataKey::from_slice(&[1u8; 31]).is_none());
        let k = DataKey::from_slice(&[7u8; 32]);
        assert_eq!(k.map(|k| k.expose()[0]), Some(7));
    }

    #[test]
    fn data_key_from_bytes_wipes_source() {
        let mut src = [9u8; 32];
        let k = DataKey::from_bytes(&mut src);
        assert_eq!(src, [0u8; 32]);
        assert_eq!(k.expose(), &[9u8; 32]);
    }

    #[test]
    fn pin_file_with_world_bits_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").expect("write the PIN file");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod 644");
        match Pin::from_file(&p) {
            Err(e) => assert!(
                matches!(e, SecretError::ReadableByOthers { mode: 0o644, .. }),
                "refused for another reason: {e}"
            ),
            Ok(_) => panic!("a world-readable PIN file was accepted"),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        assert!(Pin::from_file(&p).is_ok());
    }
}
