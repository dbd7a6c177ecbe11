//! The shape the batch data-path calls share (data keys, Encrypt, MACs):
//! items prepared one by one, each failing on its own; one HSM call per CMK
//! version among those that are ready; the answers put back in request
//! order with what the audit log records of each.

use std::collections::BTreeMap;

use super::error::{CoreError, CoreResult};
use super::requests::Item;
use crate::hsm::HsmKeyId;

/// What the audit log records of one item, filled in as its preparation
/// gets that far.
#[derive(Debug, Default)]
pub(super) struct Meta {
    /// The key it named (once the name validated).
    pub key: Option<String>,
    /// The version it used.
    pub version: Option<u32>,
    /// Whether only a break-glass grant allowed it.
    pub break_glass: bool,
}

/// Runs `call` once per CMK version (`id` names an item's) with that
/// version's prepared items in request order; `call` answers one output per
/// item. An error, or a wrong number of outputs, fails every item of the
/// group. Items whose preparation failed get `None`.
pub(super) fn per_version<P, T>(
    prepared: &[CoreResult<P>],
    id: impl Fn(&P) -> HsmKeyId,
    mut call: impl FnMut(HsmKeyId, &[&P]) -> CoreResult<Vec<T>>,
) -> Vec<Option<CoreResult<T>>> {
    let mut groups: BTreeMap<HsmKeyId, Vec<usize>> = BTreeMap::new();
    for (i, p) in prepared.iter().enumerate() {
        if let Ok(p) = p {
            groups.entry(id(p)).or_default().push(i);
        }
    }
    let mut results: Vec<Option<CoreResult<T>>> = (0..prepared.len()).map(|_| None).collect();
    for (hsm_id, idxs) in groups {
        let group: Vec<&P> = idxs
            .iter()
            .filter_map(|&i| prepared[i].as_ref().ok())
            .collect();
        match call(hsm_id, &group) {
            Ok(out) if out.len() == idxs.len() => {
                for (&i, o) in idxs.iter().zip(out) {
                    results[i] = Some(Ok(o));
                }
            }
            Ok(_) => {
                for &i in &idxs {
                    results[i] = Some(Err(CoreError::Internal(
                        "HSM returned a wrong number of results".into(),
                    )));
                }
            }
            Err(e) => {
                for &i in &idxs {
                    results[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    results
}

/// Items in request order: the preparation's error, or the HSM's outcome.
pub(super) fn collect<P, T>(
    prepared: Vec<CoreResult<P>>,
    results: Vec<Option<CoreResult<T>>>,
    metas: Vec<Meta>,
) -> Vec<Item<T>> {
    prepared
        .into_iter()
        .zip(results)
        .zip(metas)
        .map(|((p, r), m)| Item {
            key: m.key,
            version: m.version,
            break_glass: m.break_glass,
            result: match (p, r) {
                (Err(e), _) => Err(e),
                (Ok(_), Some(r)) => r,
                (Ok(_), None) => Err(CoreError::Internal("batch item was not processed".into())),
            },
        })
        .collect()
}
