//! Exports Kryoptic's PKCS#11 entry point from this cdylib.

use kryoptic_lib::fns::general::fn_get_function_list;
use kryoptic_lib::pkcs11::{CK_FUNCTION_LIST_PTR_PTR, CK_RV};

/// The PKCS#11 2.40 entry point; applications that look for
/// `C_GetInterface` fall back to it.
#[no_mangle]
pub extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    fn_get_function_list(list)
}
