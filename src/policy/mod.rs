//! Who may do what. A TOML policy (`deny_unknown_fields`, validated before
//! use) maps principals (user names or uids, group names or gids, optionally
//! an executable path) to roles and keys. Default deny.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The caller as the kernel describes it (SO_PEERCRED) plus what the daemon
/// looked up: supplementary groups and the executable path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The effective uid (from the kernel).
    pub uid: u32,
    /// The effective gid (from the kernel).
    pub gid: u32,
    /// The process id; 0 when the kernel gave none.
    pub pid: i32,
    /// `gid` and the supplementary groups, sorted; supplementary groups only
    /// while the process at `pid` is still the one the credentials describe.
    pub groups: Vec<u32>,
    /// The executable's path (`/proc/<pid>/exe`); empty when it could not be
    /// read. A principal's `exe` must equal it.
    pub exe: String,
}

impl Identity {
    /// Reads supplementary groups and the executable of `pid` from /proc.
    /// Best effort: a process that is gone leaves them empty.
    pub fn from_peer(uid: u32, gid: u32, pid: Option<i32>) -> Self {
        let pid = pid.unwrap_or(0);
        let mut caller = Identity {
            uid,
            gid,
            pid,
            groups: vec![gid],
            exe: String::new(),
        };
        if pid <= 0 {
            return caller;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return caller;
        };
        // The process at this pid now must still be the one the kernel's
        // credentials describe: the same effective uid and gid. A process
        // that exited (its pid perhaps reused by another user's process) or
        // changed its ids is described by nothing more than the
        // credentials.
        if !Identity::same_ids(&status, uid, gid) {
            return caller;
        }
        if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
            caller.groups.extend(
                line["Groups:".len()..]
                    .split_whitespace()
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
        caller.groups.sort_unstable();
        caller.groups.dedup();
        if let Ok(p) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            caller.exe = p.display().to_string();
        }
        caller
    }

    /// Whether `/proc/PID/status` shows effective ids `uid` and `gid` (the
    /// second figure of its `Uid:` and `Gid:` lines).
    fn same_ids(status: &str, uid: u32, gid: u32) -> bool {
        let effective = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok())
        };
        effective("Uid:") == Some(uid) && effective("Gid:") == Some(gid)
    }
}

/// What a principal may do; each [`Action`] needs one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Data-key operations on the keys in `keys`, with the context keys
    /// `require_context` names.
    App,
    /// GenerateMac, VerifyMac and BatchGenerateMac on the hmac keys in
    /// `keys` (blind indexes).
    Mac,
    /// Seal ceremonies (init, unseal, rekey), sealing, backups.
    Custodian,
    /// Key lifecycle, listing keys, sealing, policy reloads, backups, and
    /// break-glass where the principal allows it.
    Admin,
    /// Listing and describing keys, and hashing context values for an audit
    /// query.
    Auditor,
}

impl Role {
    /// The name the policy file, audit lines and grants use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Mac => "mac",
            Role::Custodian => "custodian",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default, rename = "principal")]
    principals: Vec<RawPrincipal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrincipal {
    name: String,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    uids: Vec<u32>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    gids: Vec<u32>,
    /// Matches every local user (dev mode's open policy).
    #[serde(default)]
    everyone: bool,
    #[serde(default)]
    exe: Option<String>,
    roles: Vec<Role>,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    require_context: Vec<String>,
    #[serde(default)]
    break_glass: bool,
    #[serde(default)]
    break_glass_keys: Vec<String>,
}

/// One validated principal.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The principal's name (as audit lines record it).
    pub name: String,
    uids: Vec<u32>,
    gids: Vec<u32>,
    everyone: bool,
    exe: Option<String>,
    /// Its roles.
    pub roles: Vec<Role>,
    keys: Vec<String>,
    require_context: Vec<String>,
    break_glass: bool,
    break_glass_keys: Vec<String>,
}

impl Principal {
    fn matches(&self, c: &Identity) -> bool {
        let who = self.everyone
            || self.uids.contains(&c.uid)
            || c.groups.iter().any(|g| self.gids.contains(g));
        let exe_ok = self.exe.as_ref().is_none_or(|e| *e == c.exe);
        who && exe_ok
    }
}

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    principals: Vec<Principal>,
}

/// What a call needs.
#[derive(Debug, Clone)]
pub enum Action<'a> {
    /// A data-key operation on `key` with an encryption context.
    DataKey {
        /// The key's name.
        key: &'a str,
        /// The request's encryption context (what `require_context` checks).
        context: &'a BTreeMap<String, String>,
    },
    /// A MAC operation (generate or verify) on the hmac key `key`.
    Mac {
        /// The key's name.
        key: &'a str,
    },
    /// Key lifecycle: create, rotate, disable, destroy...
    KeyAdmin,
    /// List and describe keys.
    KeyRead,
    /// Init, unseal, rekey.
    Ceremony,
    /// Seal (custodians and admins).
    Seal,
    /// Status (any role).
    Status,
    /// Reload the policy.
    Reload,
    /// Take a backup (admins and custodians).
    Backup,
    /// Compute the audit log's HMAC of context values (auditors).
    AuditHash,
    /// Grant oneself emergency access to `key`.
    BreakGlass {
        /// The key's name.
        key: &'a str,
    },
    /// No authorization (Ping).
    Public,
}

/// The outcome of an allowed call: who and in which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The principal that allowed it; empty for [`Action::Public`].
    pub principal: String,
    /// The role it was allowed in (`none` for [`Action::Public`]).
    pub role: &'static str,
}

/// A refusal; the message names the missing grant, never the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// `*` matches any run of characters; everything else literally.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Why a policy (or a file the daemon trusts) was refused. The messages
/// name the principal and the field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read (or its metadata could not).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Someone other than root or the daemon's user could change the file.
    #[error("{} {reason}", path.display())]
    Untrusted {
        /// The file.
        path: PathBuf,
        /// Who else could change it.
        reason: UntrustedReason,
    },
    /// The policy file's text is not a valid policy.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its text.
        source: Box<PolicyError>,
    },
    /// Not TOML, or not the policy's fields.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// The policy has no principal.
    #[error("no [[principal]] entries: the policy would deny everything")]
    NoPrincipals,
    /// A principal's name is empty or blank.
    #[error("a principal has an empty name")]
    EmptyName,
    /// A problem with one of a principal's entries (a user, a group, a
    /// key pattern).
    #[error("principal {principal:?}: {source}")]
    InPrincipal {
        /// The principal's name.
        principal: String,
        /// The problem.
        source: Box<PolicyError>,
    },
    /// Two principals have this name.
    #[error("principal {principal:?} is defined twice")]
    Duplicate {
        /// The principal's name.
        principal: String,
    },
    /// A principal has no roles.
    #[error("principal {principal:?} has no roles")]
    NoRoles {
        /// The principal's name.
        principal: String,
    },
    /// A principal matches nobody (no users, uids, groups, gids or
    /// `everyone`).
    #[error("principal {principal:?} names no users, uids, groups or gids (or everyone = true)")]
    NoMembers {
        /// The principal's name.
        principal: String,
    },
    /// `everyone = true` beside users, uids, groups or gids.
    #[error("principal {principal:?}: everyone = true cannot be combined with users or groups")]
    EveryoneWithMembers {
        /// The principal's name.
        principal: String,
    },
    /// `exe` is not an absolute path.
    #[error("principal {principal:?}: exe {exe:?} must be an absolute path")]
    RelativeExe {
        /// The principal's name.
        principal: String,
        /// The `exe` given.
        exe: String,
    },
    /// The app or mac role without `keys`.
    #[error("principal {principal:?} has the app or mac role but no keys")]
    AppWithoutKeys {
        /// The principal's name.
        principal: String,
    },
    /// `keys` without the app or mac role, or `require_context` without the
    /// app role.
    #[error("principal {principal:?}: keys apply to the app and mac roles only, require_context to the app role only")]
    KeysWithoutApp {
        /// The principal's name.
        principal: String,
    },
    /// `break_glass` without the admin role.
    #[error("principal {principal:?}: break_glass is for admins only")]
    BreakGlassNotAdmin {
        /// The principal's name.
        principal: String,
    },
    /// `break_glass` without `break_glass_keys`.
    #[error("principal {principal:?}: break_glass needs break_glass_keys")]
    BreakGlassWithoutKeys {
        /// The principal's name.
        principal: String,
    },
    /// An empty entry in `require_context`.
    #[error("principal {principal:?}: require_context has an empty key")]
    EmptyContextKey {
        /// The principal's name.
        principal: String,
    },
    /// No such user on this host.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The user database could not be read.
    #[error("looking up user {user:?}: {source}")]
    UserLookup {
        /// The user's name.
        user: String,
        /// What the lookup failed with.
        source: nix::Error,
    },
    /// No such group on this host.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// The group database could not be read.
    #[error("looking up group {group:?}: {source}")]
    GroupLookup {
        /// The group's name.
        group: String,
        /// What the lookup failed with.
        source: nix::Error,
    },
    /// A key pattern is empty or longer than 128 characters.
    #[error("key pattern {0:?} must be 1 to 128 characters")]
    PatternLength(String),
    /// A key pattern has a character other than letters, digits, `.`, `_`,
    /// `-`, `/` and `*`.
    #[error("key pattern {0:?} has a character other than letters, digits, . _ - / *")]
    PatternCharacter(String),
}

/// Why [`check_trusted_file`] refused a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UntrustedReason {
    /// Owned by a user other than root or the daemon's own.
    #[error(
        "is owned by uid {owner}: it must belong to root or to the daemon's user (uid {daemon})"
    )]
    Owner {
        /// The file's owner.
        owner: u32,
        /// The daemon's effective uid.
        daemon: u32,
    },
    /// Writable by its group or by every user.
    #[error(
        "is writable by {} (mode {mode:o}): chmod go-w it",
        if *by_everyone { "every user" } else { "its group" }
    )]
    Writable {
        /// Writable by every user, not only by its group.
        by_everyone: bool,
        /// The file's mode (`& 0o7777`).
        mode: u32,
    },
}

impl PolicyError {
    fn in_principal(principal: &str) -> impl FnOnce(PolicyError) -> PolicyError + '_ {
        move |e| PolicyError::InPrincipal {
            principal: principal.to_string(),
            source: Box::new(e),
        }
    }
}

fn resolve_user(name: &str) -> Result<u32, PolicyError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(PolicyError::UnknownUser(name.to_string())),
        Err(source) => Err(PolicyError::UserLookup {
            user: name.to_string(),
            source,
        }),
    }
}

fn resolve_group(name: &str) -> Result<u32, PolicyError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(PolicyError::UnknownGroup(name.to_string())),
        Err(source) => Err(PolicyError::GroupLookup {
            group: name.to_string(),
            source,
        }),
    }
}

fn check_pattern(p: &str) -> Result<(), PolicyError> {
    if p.is_empty() || p.len() > 128 {
        return Err(PolicyError::PatternLength(p.to_string()));
    }
    if !p
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '*'))
    {
        return Err(PolicyError::PatternCharacter(p.to_string()));
    }
    Ok(())
}

/// Refuses a file that decides what the daemon allows (the policy, the
/// config) when someone other than root or the daemon's own user could
/// change it: owned by another user, or writable by its group or by all.
pub fn check_trusted_file(path: &Path) -> Result<(), PolicyError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != 0 && m.uid() != me {
        return Err(PolicyError::Untrusted {
            path: path.to_path_buf(),
            reason: UntrustedReason::Owner {
                owner: m.uid(),
                daemon: me,
            },
        });
    }
    if m.mode() & 0o022 != 0 {
        return Err(PolicyError::Untrusted {
            path: path.to_path_buf(),
            reason: UntrustedReason::Writable {
                by_everyone: m.mode() & 0o002 != 0,
                mode: m.mode() & 0o7777,
            },
        });
    }
    Ok(())
}

impl Policy {
    /// Reads and validates the policy file at `path`, refusing it first if
    /// someone other than root or the daemon's user could change it
    /// ([`check_trusted_file`]). Users and groups are resolved now.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        check_trusted_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let p = Self::parse(&text).map_err(|e| PolicyError::InFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        for who in p.principals.iter().filter(|x| x.everyone) {
            tracing::warn!(
                principal = %who.name,
                roles = ?who.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
                "POLICY GRANTS ROLES TO EVERY LOCAL USER (everyone = true): anyone who reaches the socket has them"
            );
        }
        Ok(p)
    }

    /// Parses and validates a policy's text; user and group names are resolved
    /// against this host's databases.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy = toml::from_str(text)?;
        if raw.principals.is_empty() {
            return Err(PolicyError::NoPrincipals);
        }
        let mut seen = std::collections::HashSet::new();
        let mut principals = Vec::with_capacity(raw.principals.len());
        for p in raw.principals {
            let at = || p.name.clone();
            if p.name.trim().is_empty() {
                return Err(PolicyError::EmptyName);
            }
            if !seen.insert(p.name.clone()) {
                return Err(PolicyError::Duplicate { principal: at() });
            }
            if p.roles.is_empty() {
                return Err(PolicyError::NoRoles { principal: at() });
            }
            let mut uids = p.uids.clone();
            for u in &p.users {
                uids.push(resolve_user(u).map_err(PolicyError::in_principal(&p.name))?);
            }
            let mut gids = p.gids.clone();
            for g in &p.groups {
                gids.push(resolve_group(g).map_err(PolicyError::in_principal(&p.name))?);
            }
            if uids.is_empty() && gids.is_empty() && !p.everyone {
                return Err(PolicyError::NoMembers { principal: at() });
            }
            if p.everyone && !(uids.is_empty() && gids.is_empty()) {
                return Err(PolicyError::EveryoneWithMembers { principal: at() });
            }
            if let Some(e) = &p.exe {
                if !e.starts_with('/') {
                    return Err(PolicyError::RelativeExe {
                        principal: at(),
                        exe: e.clone(),
                    });
                }
            }
            let uses_keys = p.roles.contains(&Role::App) || p.roles.contains(&Role::Mac);
            if uses_keys && p.keys.is_empty() {
                return Err(PolicyError::AppWithoutKeys { principal: at() });
            }
            if (!uses_keys && !p.keys.is_empty())
                || (!p.roles.contains(&Role::App) && !p.require_context.is_empty())
            {
                return Err(PolicyError::KeysWithoutApp { principal: at() });
            }
            if p.break_glass && !p.roles.contains(&Role::Admin) {
                return Err(PolicyError::BreakGlassNotAdmin { principal: at() });
            }
            if p.break_glass && p.break_glass_keys.is_empty() {
                return Err(PolicyError::BreakGlassWithoutKeys { principal: at() });
            }
            for k in p.keys.iter().chain(&p.break_glass_keys) {
                check_pattern(k).map_err(PolicyError::in_principal(&p.name))?;
            }
            for c in &p.require_context {
                if c.is_empty() {
                    return Err(PolicyError::EmptyContextKey { principal: at() });
                }
            }
            principals.push(Principal {
                name: p.name,
                uids,
                gids,
                everyone: p.everyone,
                exe: p.exe,
                roles: p.roles,
                keys: p.keys,
                require_context: p.require_context,
                break_glass: p.break_glass,
                break_glass_keys: p.break_glass_keys,
            });
        }
        Ok(Policy { principals })
    }

    /// Dev mode's open policy: every local user has every role on every key.
    pub fn open_dev() -> Self {
        Policy {
            principals: vec![Principal {
                name: "dev-everyone".into(),
                uids: vec![],
                gids: vec![],
                everyone: true,
                exe: None,
                roles: vec![
                    Role::App,
                    Role::Mac,
                    Role::Custodian,
                    Role::Admin,
                    Role::Auditor,
                ],
                keys: vec!["*".into()],
                require_context: vec![],
                break_glass: true,
                break_glass_keys: vec!["*".into()],
            }],
        }
    }

    fn matching<'a>(&'a self, c: &'a Identity) -> impl Iterator<Item = &'a Principal> + 'a {
        self.principals.iter().filter(move |p| p.matches(c))
    }

    fn with_role(&self, c: &Identity, roles: &[Role], what: &str) -> Result<Grant, Denied> {
        for p in self.matching(c) {
            for r in roles {
                if p.roles.contains(r) {
                    return Ok(Grant {
                        principal: p.name.clone(),
                        role: r.as_str(),
                    });
                }
            }
        }
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(Denied(format!(
            "uid {} needs the {} role to {what}",
            c.uid,
            names.join(" or ")
        )))
    }

    /// Decides a call. Break-glass grants are checked by the caller of this
    /// function (they live in the daemon, not in the policy file).
    pub fn authorize(&self, c: &Identity, action: &Action<'_>) -> Result<Grant, Denied> {
        match action {
            Action::Public => Ok(Grant {
                principal: String::new(),
                role: "none",
            }),
            Action::Status => self.with_role(
                c,
                &[
                    Role::Admin,
                    Role::Custodian,
                    Role::Auditor,
                    Role::App,
                    Role::Mac,
                ],
                "read the status",
            ),
            Action::KeyAdmin => self.with_role(c, &[Role::Admin], "manage keys"),
            Action::KeyRead => {
                self.with_role(c, &[Role::Admin, Role::Auditor], "list or describe keys")
            }
            Action::Ceremony => {
                self.with_role(c, &[Role::Custodian], "take part in a seal ceremony")
            }
            Action::Seal => self.with_role(c, &[Role::Custodian, Role::Admin], "seal the daemon"),
            Action::Reload => self.with_role(c, &[Role::Admin], "reload the policy"),
            Action::Backup => self.with_role(c, &[Role::Admin, Role::Custodian], "take a backup"),
            Action::AuditHash => self.with_role(
                c,
                &[Role::Auditor],
                "hash context values for an audit query",
            ),
            Action::BreakGlass { key } => {
                for p in self.matching(c) {
                    if p.break_glass && p.break_glass_keys.iter().any(|k| pattern_matches(k, key)) {
                        return Ok(Grant {
                            principal: p.name.clone(),
                            role: "admin",
                        });
                    }
                }
                Err(Denied(format!(
                    "uid {} has no break-glass grant for key {key:?}",
                    c.uid
                )))
            }
            Action::Mac { key } => {
                let mut any_mac = false;
                for p in self.matching(c) {
                    if !p.roles.contains(&Role::Mac) {
                        continue;
                    }
                    any_mac = true;
                    if p.keys.iter().any(|k| pattern_matches(k, key)) {
                        return Ok(Grant {
                            principal: p.name.clone(),
                            role: "mac",
                        });
                    }
                }
                Err(Denied(if any_mac {
                    format!("uid {} has no mac grant for key {key:?}", c.uid)
                } else {
                    format!("uid {} needs the mac role to use key {key:?}", c.uid)
                }))
            }
            Action::DataKey { key, context } => {
                let mut missing_ctx: Option<String> = None;
                let mut any_app = false;
                for p in self.matching(c) {
                    if !p.roles.contains(&Role::App) {
                        continue;
                    }
                    any_app = true;
                    if !p.keys.iter().any(|k| pattern_matches(k, key)) {
                        continue;
                    }
                    if let Some(need) = p.require_context.iter().find(|k| !context.contains_key(*k))
                    {
                        missing_ctx = Some(need.clone());
                        continue;
                    }
                    return Ok(Grant {
                        principal: p.name.clone(),
                        role: "app",
                    });
                }
                Err(Denied(match (missing_ctx, any_app) {
                    (Some(k), _) => format!(
                        "encryption_context: key {key:?} requires the context to contain {k:?}"
                    ),
                    (None, true) => format!("uid {} has no app grant for key {key:?}", c.uid),
                    (None, false) => format!("uid {} needs the app role to use key {key:?}", c.uid),
                }))
            }
        }
    }

    /// The name of the first principal that matches `c`.
    pub fn principal_name(&self, c: &Identity) -> Option<String> {
        self.matching(c).next().map(|p| p.name.clone())
    }

    /// Whether `c` is a principal with the app role (for any key).
    pub fn has_app_role(&self, c: &Identity) -> bool {
        self.has_role(c, Role::App)
    }

    /// Whether `c` is a principal with `role`.
    pub fn has_role(&self, c: &Identity, role: Role) -> bool {
        self.matching(c).any(|p| p.roles.contains(&role))
    }

    /// Whether `c` is a principal with any role at all.
    pub fn knows(&self, c: &Identity) -> bool {
        self.matching(c).next().is_some()
    }
}

#[cfg(test)]
mod tests;
