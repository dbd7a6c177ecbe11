//! Tests only: a PKCS#11 module that forwards every call to a real module
//! (SoftHSM in the tests) and, on command, fails calls or loses sessions.
//!
//! `KEYWARDEN_SHIM_TARGET` names the real module; `KEYWARDEN_SHIM_CONTROL`
//! names a control file read on every intercepted call. The file holds one
//! line, `SEQ COMMAND [ARGS]`:
//!
//! - `SEQ pass` (or no file): forward everything.
//! - `SEQ fail RV [C_Fn,C_Fn...]`: the listed functions (default: all that
//!   are intercepted) return RV without reaching the real module. RV is a
//!   number (decimal or 0x hex) or one of DEVICE_REMOVED, DEVICE_ERROR,
//!   TOKEN_NOT_PRESENT, SESSION_HANDLE_INVALID, CRYPTOKI_NOT_INITIALIZED.
//! - `SEQ remove`: once, close every real session (a pulled token loses
//!   them); then every intercepted call fails with CKR_DEVICE_REMOVED.
//! - `SEQ drop`: once, close every real session; then forward.
//! - `SEQ finalize`: once, C_Finalize the real module; then forward (the
//!   real module answers CKR_CRYPTOKI_NOT_INITIALIZED until re-initialised).
//!
//! A one-shot action runs on the first call that sees a new SEQ. Every
//! forwarded call holds a read lock that a real C_Finalize takes for
//! writing, so finalising never races a call inside the real module.

#![allow(non_snake_case)]

use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};

use cryptoki_sys::*;

struct Real {
    list: CK_FUNCTION_LIST,
    _lib: libloading::Library,
}

// The function list is plain function pointers.
unsafe impl Send for Real {}
unsafe impl Sync for Real {}

static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
static SHIM_LIST: OnceLock<usize> = OnceLock::new();
static APPLIED: AtomicU64 = AtomicU64::new(0);
static GATE: RwLock<()> = RwLock::new(());

fn real() -> Option<&'static Real> {
    REAL.get_or_init(|| unsafe { load() }).as_ref().ok()
}

unsafe fn load() -> Result<Real, String> {
    let path = std::env::var("KEYWARDEN_SHIM_TARGET")
        .map_err(|_| "KEYWARDEN_SHIM_TARGET is not set".to_string())?;
    let lib = libloading::Library::new(&path).map_err(|e| e.to_string())?;
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        lib.get(b"C_GetFunctionList").map_err(|e| e.to_string())?;
    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    let rv = get(&mut list);
    if rv != CKR_OK || list.is_null() {
        return Err(format!("C_GetFunctionList of {path} returned {rv}"));
    }
    let list = *list;
    Ok(Real { list, _lib: lib })
}

enum Fault {
    None,
    Fail(CK_RV),
}

fn parse_rv(s: &str) -> Option<CK_RV> {
    match s {
        "DEVICE_REMOVED" => Some(CKR_DEVICE_REMOVED),
        "DEVICE_ERROR" => Some(CKR_DEVICE_ERROR),
        "TOKEN_NOT_PRESENT" => Some(CKR_TOKEN_NOT_PRESENT),
        "SESSION_HANDLE_INVALID" => Some(CKR_SESSION_HANDLE_INVALID),
        "CRYPTOKI_NOT_INITIALIZED" => Some(CKR_CRYPTOKI_NOT_INITIALIZED),
        _ => match s.strip_prefix("0x") {
            Some(hex) => CK_RV::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
    }
}

unsafe fn close_all_real_sessions(r: &Real) {
    let (Some(slots_fn), Some(close)) = (r.list.C_GetSlotList, r.list.C_CloseAllSessions) else {
        return;
    };
    let mut n: CK_ULONG = 0;
    if slots_fn(CK_FALSE, ptr::null_mut(), &mut n) != CKR_OK {
        return;
    }
    let mut slots = vec![0 as CK_SLOT_ID; n as usize];
    if slots_fn(CK_FALSE, slots.as_mut_ptr(), &mut n) != CKR_OK {
        return;
    }
    for s in &slots[..n as usize] {
        close(*s);
    }
}

/// Reads the control file, runs a new one-shot action, and says what to
/// inject for `function`.
unsafe fn fault_for(function: &str) -> Fault {
    let Ok(path) = std::env::var("KEYWARDEN_SHIM_CONTROL") else {
        return Fault::None;
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Fault::None;
    };
    let mut words = text.split_whitespace();
    let (Some(seq), Some(cmd)) = (
        words.next().and_then(|s| s.parse::<u64>().ok()),
        words.next(),
    ) else {
        return Fault::None;
    };
    let new = APPLIED
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
            (seq > old).then_some(seq)
        })
        .is_ok();
    if new {
        if let Some(r) = real() {
            match cmd {
                "remove" | "drop" => {
                    // As a real removal does: after the calls in flight, so
                    // that none is inside the module with a session it frees.
                    let _w = GATE.write().unwrap_or_else(|p| p.into_inner());
                    close_all_real_sessions(r)
                }
                "finalize" => {
                    let _w = GATE.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(f) = r.list.C_Finalize {
                        f(ptr::null_mut());
                    }
                }
                _ => {}
            }
        }
    }
    match cmd {
        "remove" => Fault::Fail(CKR_DEVICE_REMOVED),
        "fail" => {
            let Some(rv) = words.next().and_then(parse_rv) else {
                return Fault::None;
            };
            let only = words
                .next()
                .map(|l| l.split(',').map(str::to_string).collect::<Vec<_>>());
            match only {
                Some(fns) if !fns.iter().any(|f| f == function) => Fault::None,
                _ => Fault::Fail(rv),
            }
        }
        _ => Fault::None,
    }
}

macro_rules! intercept {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                if let Fault::Fail(rv) = fault_for(stringify!($name)) {
                    return rv;
                }
                let Some(f) = real().and_then(|r| r.list.$name) else {
                    return CKR_GENERAL_ERROR;
                };
                let _r = GATE.read().unwrap_or_else(|p| p.into_inner());
                f($($arg),*)
            }
        )*
        fn install(list: &mut CK_FUNCTION_LIST) {
            $( list.$name = Some($name); )*
        }
    };
}

intercept! {
    C_Initialize(a: *mut std::os::raw::c_void);
    C_GetInfo(a: *mut CK_INFO);
    C_GetSlotList(a: CK_BBOOL, b: *mut CK_SLOT_ID, c: *mut CK_ULONG);
    C_GetTokenInfo(a: CK_SLOT_ID, b: *mut CK_TOKEN_INFO);
    C_OpenSession(a: CK_SLOT_ID, b: CK_FLAGS, c: *mut std::os::raw::c_void, d: CK_NOTIFY, e: *mut CK_SESSION_HANDLE);
    C_GetSessionInfo(a: CK_SESSION_HANDLE, b: *mut CK_SESSION_INFO);
    C_Login(a: CK_SESSION_HANDLE, b: CK_USER_TYPE, c: *mut CK_UTF8CHAR, d: CK_ULONG);
    C_SetPIN(a: CK_SESSION_HANDLE, b: *mut CK_UTF8CHAR, c: CK_ULONG, d: *mut CK_UTF8CHAR, e: CK_ULONG);
    C_CreateObject(a: CK_SESSION_HANDLE, b: *mut CK_ATTRIBUTE, c: CK_ULONG, d: *mut CK_OBJECT_HANDLE);
    C_CopyObject(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE, c: *mut CK_ATTRIBUTE, d: CK_ULONG, e: *mut CK_OBJECT_HANDLE);
    C_DestroyObject(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE);
    C_GetAttributeValue(a: CK_SESSION_HANDLE, b: CK_OBJECT_HANDLE, c: *mut CK_ATTRIBUTE, d: CK_ULONG);
    C_FindObjectsInit(a: CK_SESSION_HANDLE, b: *mut CK_ATTRIBUTE, c: CK_ULONG);
    C_FindObjects(a: CK_SESSION_HANDLE, b: *mut CK_OBJECT_HANDLE, c: CK_ULONG, d: *mut CK_ULONG);
    C_EncryptInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE);
    C_Encrypt(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG, d: *mut CK_BYTE, e: *mut CK_ULONG);
    C_DecryptInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE);
    C_Decrypt(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG, d: *mut CK_BYTE, e: *mut CK_ULONG);
    C_SignInit(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: CK_OBJECT_HANDLE);
    C_Sign(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG, d: *mut CK_BYTE, e: *mut CK_ULONG);
    C_GenerateKey(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: *mut CK_ATTRIBUTE, d: CK_ULONG, e: *mut CK_OBJECT_HANDLE);
    C_GenerateKeyPair(a: CK_SESSION_HANDLE, b: *mut CK_MECHANISM, c: *mut CK_ATTRIBUTE, d: CK_ULONG, e: *mut CK_ATTRIBUTE, f: CK_ULONG, g: *mut CK_OBJECT_HANDLE, h: *mut CK_OBJECT_HANDLE);
    C_GenerateRandom(a: CK_SESSION_HANDLE, b: *mut CK_BYTE, c: CK_ULONG);
}

/// A real C_Finalize waits for calls in flight inside the real module.
unsafe extern "C" fn shim_finalize(a: *mut std::os::raw::c_void) -> CK_RV {
    let Some(f) = real().and_then(|r| r.list.C_Finalize) else {
        return CKR_GENERAL_ERROR;
    };
    let _w = GATE.write().unwrap_or_else(|p| p.into_inner());
    f(a)
}

/// # Safety
/// Called by a PKCS#11 application with a valid out pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(out: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if out.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let Some(r) = real() else {
        return CKR_GENERAL_ERROR;
    };
    let addr = *SHIM_LIST.get_or_init(|| {
        let mut list = r.list;
        install(&mut list);
        list.C_Finalize = Some(shim_finalize);
        list.C_GetFunctionList = Some(C_GetFunctionList);
        Box::into_raw(Box::new(list)) as usize
    });
    *out = addr as *mut CK_FUNCTION_LIST;
    CKR_OK
}
