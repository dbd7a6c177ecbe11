//! Process hardening at start-up, whether or not systemd is in charge: no
//! core dumps, no ptrace attach by same-uid processes, memory locked where
//! the limit allows, umask 077. What could not be done is reported in
//! Status.

use std::sync::OnceLock;

static REPORT: OnceLock<Vec<String>> = OnceLock::new();

/// What hardening achieved (for Status).
pub fn report() -> Vec<String> {
    REPORT.get().cloned().unwrap_or_default()
}

/// Hardens the process (umask, no core dumps or ptrace, locked memory,
/// the descriptor limit raised to its hard limit) and keeps the
/// [`report`]. Called once at start-up, before any secret is read; what
/// fails is reported, not fatal.
pub fn apply() {
    let mut out = Vec::new();
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    out.push("umask 077".to_string());
    match nix::sys::prctl::set_dumpable(false) {
        Ok(()) => out.push("non-dumpable (no core dumps, no ptrace attach by the same uid)".into()),
        Err(e) => out.push(format!("WARNING: could not clear the dumpable flag: {e}")),
    }
    match nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0) {
        Ok(()) => out.push("RLIMIT_CORE 0".into()),
        Err(e) => out.push(format!("WARNING: could not set RLIMIT_CORE to 0: {e}")),
    }
    out.push(lock_memory());
    out.push(raise_nofile());
    let _ = REPORT.set(out);
}

/// The descriptor soft limit up to the hard one, so that the connection
/// caps (per uid and in all) bind before the descriptors run out.
fn raise_nofile() -> String {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => format!("RLIMIT_NOFILE {hard} (raised from {soft})"),
            Err(e) => format!("WARNING: RLIMIT_NOFILE stays {soft}: {e}"),
        },
        Ok((soft, _)) => format!("RLIMIT_NOFILE {soft}"),
        Err(e) => format!("WARNING: RLIMIT_NOFILE unknown: {e}"),
    }
}

/// mlockall(MCL_CURRENT | MCL_FUTURE) only where it cannot make later
/// allocations fail: with an unlimited RLIMIT_MEMLOCK (or as root, which
/// has CAP_IPC_LOCK). Otherwise secrets may reach swap, and Status says so.
fn lock_memory() -> String {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    let unlimited =
        matches!(getrlimit(Resource::RLIMIT_MEMLOCK), Ok((soft, _)) if soft == RLIM_INFINITY);
    if !unlimited && !nix::unistd::geteuid().is_root() {
        return "WARNING: memory not locked (RLIMIT_MEMLOCK is limited; set LimitMEMLOCK=infinity): secrets may reach swap".into();
    }
    // MCL_ONFAULT (Linux 4.4): pages are locked as they are touched, so
    // untouched library text and allocator reservations stay non-resident.
    let onfault = MlockAllFlags::from_bits_retain(libc::MCL_ONFAULT);
    match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE | onfault) {
        Ok(()) => "all memory locked as it is used (mlockall MCL_ONFAULT)".into(),
        Err(e) => format!("WARNING: mlockall failed ({e}): secrets may reach swap"),
    }
}
