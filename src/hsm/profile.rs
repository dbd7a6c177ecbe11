//! HSM profiles: vendor quirks as data (`hsm-profiles/*.toml`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A validated HSM profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmProfile {
    /// Short name shown in Status.
    pub name: String,
    /// Candidate paths of the PKCS#11 module; the first that exists is used.
    pub module_paths: Vec<PathBuf>,
    /// Whether the daemon may keep session-object copies of CMK versions.
    pub session_key_copies: bool,
    /// Upper bound on worker sessions.
    pub max_sessions: u32,
    /// `CKR_*` names this token returns from C_Decrypt when an AES-GCM tag
    /// does not verify.
    pub gcm_tag_failure_codes: Vec<String>,
    /// The token refuses C_CopyObject of a non-modifiable object
    /// (SoftHSM: CKR_ATTRIBUTE_READ_ONLY), so CMKs that get session copies
    /// are created with CKA_MODIFIABLE true.
    #[serde(default)]
    pub copy_needs_modifiable: bool,
    /// How the token itself is backed up (`keywarden operator backup`).
    #[serde(default)]
    pub backup: BackupProfile,
}

/// How a backup covers the token.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupProfile {
    /// Where the token keeps its objects, which decides how it is backed up.
    #[serde(default)]
    pub token: TokenBackup,
    /// For `vendor`: the vendor's procedure, shown by backup and restore.
    #[serde(default)]
    pub procedure: String,
}

/// Where a token keeps its objects, for a backup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenBackup {
    /// SoftHSM 2: the `directories.tokendir` its configuration names
    /// (`SOFTHSM2_CONF`, else /etc/softhsm/softhsm2.conf), copied whole.
    Softhsm2Tokendir,
    /// Kryoptic: the SQLite database of its configuration's slot
    /// (`KRYOPTIC_CONF`), copied with SQLite's online backup.
    KryopticSqlite,
    /// A hardware HSM: the vendor's procedure backs up the token; the
    /// backup records what the token must hold, and a restore checks it.
    #[default]
    Vendor,
}

/// The SoftHSM 2 profile shipped with the source, used by `keywarden dev`.
pub const SOFTHSM2_PROFILE: &str = include_str!("../../hsm-profiles/softhsm2.toml");
/// The Kryoptic profile shipped with the source, used by `keywarden dev`.
pub const KRYOPTIC_PROFILE: &str = include_str!("../../hsm-profiles/kryoptic.toml");

/// Why a profile was refused; the message names the field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What reading it failed with.
        source: std::io::Error,
    },
    /// The file's text is not a valid profile.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its text.
        source: Box<ProfileError>,
    },
    /// Not TOML, or not the profile's fields.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// `name` is empty.
    #[error("name must not be empty")]
    EmptyName,
    /// `max_sessions` is 0 or above 1024.
    #[error("max_sessions must be between 1 and 1024")]
    MaxSessions,
    /// An entry of `gcm_tag_failure_codes` does not start with `CKR_`.
    #[error("gcm_tag_failure_codes: {0:?} is not a CKR_ return value name")]
    NotAReturnValue(String),
}

impl HsmProfile {
    /// Reads and validates the profile at `path`.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| ProfileError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    /// Parses and validates a profile's text.
    pub fn parse(text: &str) -> Result<Self, ProfileError> {
        let p: HsmProfile = toml::from_str(text)?;
        if p.name.trim().is_empty() {
            return Err(ProfileError::EmptyName);
        }
        if p.max_sessions == 0 || p.max_sessions > 1024 {
            return Err(ProfileError::MaxSessions);
        }
        for code in &p.gcm_tag_failure_codes {
            if !code.starts_with("CKR_") {
                return Err(ProfileError::NotAReturnValue(code.clone()));
            }
        }
        Ok(p)
    }

    /// The first candidate module that exists on this host.
    pub fn find_module(&self) -> Option<PathBuf> {
        self.module_paths.iter().find(|p| p.is_file()).cloned()
    }

    /// Whether a return value name (as `cryptoki` spells it, e.g.
    /// `GeneralError`) is one of this token's GCM tag-failure codes.
    pub fn is_gcm_tag_failure(&self, rv_debug_name: &str) -> bool {
        let want = rv_debug_name.to_ascii_lowercase();
        self.gcm_tag_failure_codes.iter().any(|c| {
            c.trim_start_matches("CKR_")
                .replace('_', "")
                .to_ascii_lowercase()
                == want
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_softhsm_profile_parses() {
        let p = HsmProfile::parse(SOFTHSM2_PROFILE).unwrap();
        assert_eq!(p.name, "softhsm2");
        assert!(p.session_key_copies);
        assert!(p.is_gcm_tag_failure("GeneralError"));
        assert!(p.is_gcm_tag_failure("EncryptedDataInvalid"));
        assert!(!p.is_gcm_tag_failure("DeviceRemoved"));
    }

    #[test]
    fn every_shipped_profile_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hsm-profiles");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let profile =
                HsmProfile::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            // The two software tokens the suite runs on are tested; every
            // other profile must say it is not.
            if !matches!(profile.name.as_str(), "softhsm2" | "kryoptic") {
                assert!(
                    text.starts_with("# UNTESTED"),
                    "{} must say it is untested",
                    p.display()
                );
            }
            n += 1;
        }
        assert!(n >= 5);
    }

    #[test]
    fn profile_rejects_unknown_fields_and_bad_codes() {
        let base = "name = \"x\"\nmodule_paths = []\nsession_key_copies = true\nmax_sessions = 2\n";
        assert!(matches!(
            HsmProfile::parse(&format!("{base}gcm_tag_failure_codes = [\"GENERAL\"]\n")),
            Err(ProfileError::NotAReturnValue(c)) if c == "GENERAL"
        ));
        assert!(matches!(
            HsmProfile::parse(&format!("{base}gcm_tag_failure_codes = []\nslot = 0\n")),
            Err(ProfileError::Toml(_))
        ));
        assert!(HsmProfile::parse(&format!("{base}gcm_tag_failure_codes = []\n")).is_ok());
    }
}
