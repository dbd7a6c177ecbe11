//! Finding the token and Keywarden's objects on it (CMK versions,
//! counters, the audit-signing key).

use super::*;

pub(super) fn select_token(
    ctx: &Pkcs11,
    selector: &TokenSelector,
) -> HsmResult<(Slot, TokenDescription)> {
    let mut matches = Vec::new();
    for slot in ctx.get_slots_with_token().map_err(ck)? {
        let info = ctx.get_token_info(slot).map_err(ck)?;
        if !info.token_initialized() {
            continue;
        }
        let hit = match selector {
            TokenSelector::Label(l) => info.label().trim_end() == l.trim_end(),
            TokenSelector::Serial(s) => info.serial_number().trim_end() == s.trim_end(),
        };
        if hit {
            matches.push((
                slot,
                TokenDescription {
                    label: info.label().trim_end().to_string(),
                    serial: info.serial_number().trim_end().to_string(),
                    manufacturer: info.manufacturer_id().trim_end().to_string(),
                    model: info.model().trim_end().to_string(),
                },
            ));
        }
    }
    match matches.len() {
        1 => matches
            .pop()
            .ok_or_else(|| HsmError::TokenNotFound(selector.to_string())),
        0 => Err(HsmError::TokenNotFound(format!(
            "no initialised token with {selector}"
        ))),
        n => Err(HsmError::TokenNotFound(format!(
            "{n} tokens match {selector}; select by serial"
        ))),
    }
}

/// DER of the OID prime256v1 (secp256r1), for CKA_EC_PARAMS.
pub(super) const P256_PARAMS: [u8; 10] =
    [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

pub(super) fn find_by_label(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> HsmResult<Option<ObjectHandle>> {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(ck)?;
    Ok(found.first().copied())
}

/// Every counter data object with this label and its value.
pub(super) fn counter_objects(
    session: &Session,
    label: &str,
) -> HsmResult<Vec<(ObjectHandle, u64)>> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(ck)?;
    let mut out = Vec::with_capacity(found.len());
    for h in found {
        let attrs = match session.get_attributes(h, &[AttributeType::Value]) {
            // Destroyed since the search by another process on the same
            // token (a cluster node replacing the counter): not a counter.
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => continue,
            other => other.map_err(ck)?,
        };
        for a in attrs {
            if let Attribute::Value(v) = a {
                let arr: [u8; 8] = v.as_slice().try_into().map_err(|_| {
                    HsmError::Unexpected("counter object has the wrong size".into())
                })?;
                out.push((h, u64::from_be_bytes(arr)));
            }
        }
    }
    Ok(out)
}

/// CKA_EC_POINT is a DER OCTET STRING around the SEC1 point.
pub(super) fn unwrap_ec_point(der: &[u8]) -> HsmResult<Vec<u8>> {
    match der {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => Ok(rest.to_vec()),
        [0x04, rest @ ..] if rest.len() == 65 => Ok(rest.to_vec()),
        _ if der.len() == 65 && der[0] == 0x04 => Ok(der.to_vec()),
        _ => Err(HsmError::Unexpected(format!(
            "unexpected CKA_EC_POINT encoding ({} bytes)",
            der.len()
        ))),
    }
}
