//! Planning a share set (N, M, recipients, labels) and issuing its shares.

use super::*;

pub(super) struct RekeyPlan {
    pub(super) shares: u8,
    pub(super) threshold: u8,
    pub(super) recipients: Vec<age::x25519::Recipient>,
    pub(super) labels: Vec<String>,
}

pub(super) fn random_set_id() -> SealResult<[u8; 4]> {
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| SealError::Random(e.to_string()))?;
    Ok(id)
}

pub(super) fn validate_plan(spec: ShareSpec<'_>, allow_single: bool) -> SealResult<RekeyPlan> {
    let ShareSpec {
        shares,
        threshold,
        recipients,
        labels,
    } = spec;
    let invalid = |field, reason: String| SealError::InvalidParameter { field, reason };
    if !(1..=255).contains(&shares) {
        return Err(invalid(
            "shares",
            format!("{shares} is not between 1 and 255"),
        ));
    }
    if threshold > shares {
        return Err(invalid(
            "threshold",
            format!("{threshold} is larger than the number of shares ({shares})"),
        ));
    }
    if threshold < 2 && !(allow_single && threshold == 1) {
        return Err(invalid(
            "threshold",
            format!("{threshold} is below 2 (a threshold of 1 is allowed only in dev mode)"),
        ));
    }
    if !recipients.is_empty() && recipients.len() != shares as usize {
        return Err(invalid(
            "recipients",
            format!(
                "{} given; give none or one per share ({shares})",
                recipients.len()
            ),
        ));
    }
    if !labels.is_empty() && labels.len() != shares as usize {
        return Err(invalid(
            "labels",
            format!(
                "{} given; give none or one per share ({shares})",
                labels.len()
            ),
        ));
    }
    for (i, l) in labels.iter().enumerate() {
        if l.is_empty() || l.len() > 64 || l.chars().any(crate::core::validate::unprintable) {
            return Err(invalid(
                "labels",
                format!("label {} must be 1 to 64 printable characters", i + 1),
            ));
        }
    }
    let mut parsed = Vec::with_capacity(recipients.len());
    for (i, r) in recipients.iter().enumerate() {
        let rec: age::x25519::Recipient = r.trim().parse().map_err(|e| {
            invalid(
                "recipients",
                format!("recipient {} is not an age X25519 public key: {e}", i + 1),
            )
        })?;
        parsed.push(rec);
    }
    Ok(RekeyPlan {
        shares: shares as u8,
        threshold: threshold as u8,
        recipients: parsed,
        labels: labels.to_vec(),
    })
}

pub(super) fn issue_shares(
    key: &UnsealKey,
    set_id: &[u8; 4],
    plan: &RekeyPlan,
) -> SealResult<Vec<IssuedShare>> {
    let raw = shamir::split(key, plan.threshold, plan.shares).map_err(SealError::Shamir)?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let line = share::format(set_id, plan.threshold, s);
        let label = plan
            .labels
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("share-{}", s.index));
        let issued = match plan.recipients.get(i) {
            Some(rec) => {
                let armored = age::encrypt_and_armor(rec, &share_text(&line))
                    .map_err(|e| SealError::Age(e.to_string()))?;
                IssuedShare {
                    label,
                    share: Zeroizing::new(armored),
                    encrypted: true,
                }
            }
            None => IssuedShare {
                label,
                share: line,
                encrypted: false,
            },
        };
        out.push(issued);
    }
    Ok(out)
}

/// A share line and its newline in zeroizing memory, for age to encrypt.
pub(super) fn share_text(line: &str) -> Zeroizing<Vec<u8>> {
    let mut text = Zeroizing::new(Vec::with_capacity(line.len() + 1));
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    text
}
