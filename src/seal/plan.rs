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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(
        shares: u32,
        threshold: u32,
        recipients: &'a [String],
        labels: &'a [String],
    ) -> ShareSpec<'a> {
        ShareSpec {
            shares,
            threshold,
            recipients,
            labels,
        }
    }

    /// The field a refused plan names, and its reason.
    fn refused(spec: ShareSpec<'_>, allow_single: bool) -> (&'static str, String) {
        match validate_plan(spec, allow_single) {
            Err(SealError::InvalidParameter { field, reason }) => (field, reason),
            Err(e) => panic!("not an InvalidParameter: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn share_counts_and_thresholds_are_checked_with_the_field_named() {
        for (n, m, single, field) in [
            (0, 0, true, "shares"),
            (256, 2, false, "shares"),
            (3, 4, false, "threshold"),
            (3, 1, false, "threshold"),
            (1, 1, false, "threshold"),
            (3, 0, true, "threshold"),
        ] {
            let (got, reason) = refused(spec(n, m, &[], &[]), single);
            assert_eq!(got, field, "{m} of {n}: {reason}");
        }
        let (_, reason) = refused(spec(3, 1, &[], &[]), false);
        assert!(reason.contains("dev mode"), "{reason}");
        for (n, m, single) in [
            (255, 255, false),
            (255, 2, false),
            (2, 2, false),
            (1, 1, true),
            (5, 1, true),
        ] {
            let p = validate_plan(spec(n, m, &[], &[]), single).unwrap();
            assert_eq!((u32::from(p.shares), u32::from(p.threshold)), (n, m));
            assert!(p.recipients.is_empty() && p.labels.is_empty());
        }
    }

    #[test]
    fn recipients_and_labels_are_none_or_one_per_share_and_well_formed() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let key = age::x25519::Identity::generate().to_public().to_string();

        let (f, r) = refused(spec(3, 2, &[], &s(&["a", "b"])), false);
        assert_eq!(
            (f, r.as_str()),
            ("labels", "2 given; give none or one per share (3)")
        );
        let (f, r) = refused(spec(3, 2, &s(&[&key]), &[]), false);
        assert_eq!(f, "recipients", "{r}");
        for (labels, which) in [
            (s(&["", "b"]), "label 1 "),
            (s(&["a", &"l".repeat(65)]), "label 2 "),
            (s(&["a", "b\x1b[2K"]), "label 2 "),
            (s(&["a", "\u{202e}b"]), "label 2 "),
        ] {
            let (f, r) = refused(spec(2, 2, &[], &labels), false);
            assert_eq!(f, "labels");
            assert!(r.starts_with(which), "{r}");
        }
        let labels = s(&["Alice (CISO)", &"l".repeat(64)]);
        assert_eq!(
            validate_plan(spec(2, 2, &[], &labels), false)
                .unwrap()
                .labels,
            labels
        );

        let (f, r) = refused(spec(2, 2, &s(&[&key, "age1bogus"]), &[]), false);
        assert_eq!(f, "recipients");
        assert!(
            r.starts_with("recipient 2 is not an age X25519 public key"),
            "{r}"
        );
        // Surrounding white space (a pasted line) is forgiven.
        let padded = s(&[&format!("  {key}\n"), &key]);
        assert_eq!(
            validate_plan(spec(2, 2, &padded, &[]), false)
                .unwrap()
                .recipients
                .len(),
            2
        );
    }

    #[test]
    fn issued_shares_parse_back_recombine_and_decrypt_for_their_custodian() {
        let key = UnsealKey::random().unwrap();
        let set = [0xde, 0xad, 0xbe, 0xef];
        let plan = validate_plan(spec(3, 2, &[], &[]), false).unwrap();
        let issued = issue_shares(&key, &set, &plan).unwrap();
        let parsed: Vec<share::Share> = issued
            .iter()
            .map(|i| {
                assert!(!i.encrypted);
                share::parse(&i.share).unwrap()
            })
            .collect();
        let labels: Vec<&str> = issued.iter().map(|i| i.label.as_str()).collect();
        let indexes: Vec<u8> = parsed.iter().map(|p| p.bytes.index).collect();
        assert_eq!(labels, ["share-1", "share-2", "share-3"]);
        assert_eq!(indexes, [1, 2, 3]);
        assert!(parsed.iter().all(|p| p.set_id == set && p.threshold == 2));
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let got = shamir::combine(&[&parsed[pair[0]].bytes, &parsed[pair[1]].bytes]).unwrap();
            assert_eq!(got.expose(), key.expose(), "{pair:?}");
        }

        // With recipients: each custodian's age identity opens their share.
        let ids = [
            age::x25519::Identity::generate(),
            age::x25519::Identity::generate(),
        ];
        let recipients: Vec<String> = ids.iter().map(|i| i.to_public().to_string()).collect();
        let labels = vec!["alice".to_string(), "bob".to_string()];
        let plan = validate_plan(spec(2, 2, &recipients, &labels), false).unwrap();
        let issued = issue_shares(&key, &set, &plan).unwrap();
        let mut opened = Vec::new();
        for (i, id) in issued.iter().zip(&ids) {
            assert!(i.encrypted);
            assert!(i.share.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
            let text = String::from_utf8(age::decrypt(id, i.share.as_bytes()).unwrap()).unwrap();
            assert!(text.ends_with('\n'));
            opened.push(share::parse(&text).unwrap());
        }
        assert_eq!(issued[1].label, "bob");
        // Not the other custodian's.
        assert!(age::decrypt(&ids[1], issued[0].share.as_bytes()).is_err());
        let got = shamir::combine(&[&opened[0].bytes, &opened[1].bytes]).unwrap();
        assert_eq!(got.expose(), key.expose());
    }
}
