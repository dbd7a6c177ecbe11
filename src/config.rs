//! Daemon configuration: TOML read into strict raw structs
//! (`deny_unknown_fields`), then validated into [`Config`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hsm::profile::HsmProfile;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    hsm: RawHsm,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    socket: PathBuf,
    state_dir: PathBuf,
    #[serde(default)]
    socket_mode: Option<u32>,
    #[serde(default)]
    allow_root: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHsm {
    profile: PathBuf,
    #[serde(default)]
    module: Option<PathBuf>,
    #[serde(default)]
    token_label: Option<String>,
    #[serde(default)]
    token_serial: Option<String>,
    #[serde(default)]
    pin_file: Option<PathBuf>,
    #[serde(default)]
    pin_credential: Option<String>,
    #[serde(default)]
    pool_size: Option<u32>,
}

/// How the token is chosen: never by slot number, which changes across
/// re-plugs and SoftHSM restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Serial(String),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(l) => write!(f, "label {l:?}"),
            TokenSelector::Serial(s) => write!(f, "serial {s:?}"),
        }
    }
}

/// Where the user PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    File(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

impl PinSource {
    pub fn path(&self) -> Result<PathBuf, ConfigError> {
        match self {
            PinSource::File(p) => Ok(p.clone()),
            PinSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "hsm.pin_credential = {name:?} but CREDENTIALS_DIRECTORY is not set"
                    ))
                })?;
                Ok(Path::new(&dir).join(name))
            }
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub state_dir: PathBuf,
    pub allow_root: bool,
    pub profile: HsmProfile,
    pub module: PathBuf,
    pub token: TokenSelector,
    pub pin: PinSource,
    pub pool_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads, parses and validates a config file (and the HSM profile it names).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, path, base)
    }

    fn from_toml(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let socket_mode = raw.server.socket_mode.unwrap_or(0o660);
        if socket_mode & 0o007 != 0 {
            return Err(ConfigError::Invalid(format!(
                "server.socket_mode {socket_mode:o} gives access to every user; use 0660 or stricter"
            )));
        }
        if socket_mode & !0o777 != 0 {
            return Err(ConfigError::Invalid(format!(
                "server.socket_mode {socket_mode:o} is not a permission mode"
            )));
        }

        let token = match (raw.hsm.token_label, raw.hsm.token_serial) {
            (Some(l), None) if !l.trim().is_empty() => TokenSelector::Label(l),
            (None, Some(s)) if !s.trim().is_empty() => TokenSelector::Serial(s),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set one of hsm.token_label and hsm.token_serial, not both".into(),
                ))
            }
            _ => return Err(ConfigError::Invalid(
                "hsm.token_label or hsm.token_serial is required (slot numbers are not accepted)"
                    .into(),
            )),
        };

        let pin = match (raw.hsm.pin_file, raw.hsm.pin_credential) {
            (Some(f), None) => PinSource::File(resolve(&f)),
            (None, Some(c)) if !c.is_empty() && !c.contains('/') => PinSource::Credential(c),
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "hsm.pin_credential must be a plain credential name".into(),
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "set one of hsm.pin_file and hsm.pin_credential, not both".into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "hsm.pin_file or hsm.pin_credential is required (PINs are never inline)".into(),
                ))
            }
        };

        let profile_path = resolve(&raw.hsm.profile);
        let profile = HsmProfile::load(&profile_path)
            .map_err(|e| ConfigError::Invalid(format!("hsm.profile: {e}")))?;

        let module = match raw.hsm.module {
            Some(m) => resolve(&m),
            None => profile.find_module().ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "no PKCS#11 module of profile {:?} exists on this host (tried {:?}); set hsm.module",
                    profile.name, profile.module_paths
                ))
            })?,
        };
        if !module.is_file() {
            return Err(ConfigError::Invalid(format!(
                "hsm.module {} does not exist",
                module.display()
            )));
        }

        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let wanted = raw.hsm.pool_size.map(|n| n as usize).unwrap_or(cores * 2);
        if wanted == 0 {
            return Err(ConfigError::Invalid(
                "hsm.pool_size must be at least 1".into(),
            ));
        }
        let pool_size = wanted.min(profile.max_sessions as usize).max(1);

        let state_dir = resolve(&raw.server.state_dir);
        let socket = resolve(&raw.server.socket);
        if socket.as_os_str().len() > 100 {
            return Err(ConfigError::Invalid(format!(
                "server.socket path is too long for a Unix socket ({} bytes, at most 100)",
                socket.as_os_str().len()
            )));
        }
        Ok(Config {
            socket,
            socket_mode,
            state_dir,
            allow_root: raw.server.allow_root,
            profile,
            module,
            token,
            pin,
            pool_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_profile(dir: &Path) -> PathBuf {
        let module = dir.join("libfake.so");
        std::fs::write(&module, b"").ok();
        let p = dir.join("p.toml");
        std::fs::write(
            &p,
            format!(
                "name = \"t\"\nmodule_paths = [{:?}]\nsession_key_copies = false\nmax_sessions = 4\ngcm_tag_failure_codes = []\n",
                module
            ),
        )
        .ok();
        p
    }

    fn parse(dir: &Path, hsm_extra: &str, server_extra: &str) -> Result<Config, ConfigError> {
        let profile = write_profile(dir);
        let text = format!(
            "[server]\nsocket = \"s.sock\"\nstate_dir = \"state\"\n{server_extra}\n[hsm]\nprofile = {profile:?}\n{hsm_extra}\n"
        );
        Config::from_toml(&text, &dir.join("c.toml"), dir)
    }

    #[test]
    fn valid_config_resolves_relative_paths_and_caps_pool() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(
            dir.path(),
            "token_label = \"kw\"\npin_file = \"pin\"\npool_size = 100",
            "",
        )
        .unwrap();
        assert_eq!(c.socket, dir.path().join("s.sock"));
        assert_eq!(c.pin, PinSource::File(dir.path().join("pin")));
        assert_eq!(c.token, TokenSelector::Label("kw".into()));
        assert_eq!(c.pool_size, 4);
        assert_eq!(c.socket_mode, 0o660);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = parse(
            dir.path(),
            "token_label = \"kw\"\npin_file = \"pin\"\npin = \"1234\"",
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn token_must_be_named_and_pin_must_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = parse(dir.path(), "pin_file = \"pin\"", "").unwrap_err();
        assert!(e.to_string().contains("token_label"), "{e}");
        let e = parse(dir.path(), "token_label = \"kw\"", "").unwrap_err();
        assert!(e.to_string().contains("pin_file"), "{e}");
        let e = parse(
            dir.path(),
            "token_label = \"kw\"\ntoken_serial = \"1\"\npin_file = \"p\"",
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn world_accessible_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = parse(
            dir.path(),
            "token_label = \"kw\"\npin_file = \"pin\"",
            "socket_mode = 0o666",
        )
        .unwrap_err();
        assert!(e.to_string().contains("socket_mode"), "{e}");
    }
}
