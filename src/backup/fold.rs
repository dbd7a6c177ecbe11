//! The ledger folded from a log of any size, line by line, for an
//! operator's acceptance of an older registry ([`crate::core`]'s
//! acknowledgement): for each key the newest record a verified line
//! proves, and which generations the verified lines account for.
//!
//! Two passes over the same lines: the first collects void lines (a void
//! line follows the line it voids, so one pass cannot know whether a write
//! line stands); the second folds the writes. Only one entry per key and
//! the generations above the registry's are kept, so memory follows the
//! number of keys and the gap, not the log's length.
//!
//! Generations are accounted for by a write line that stands (its MAC
//! verifies, no void names it) or by a reseal line, which records that the
//! registry jumped from one generation to another without a record (an
//! acknowledgement or a restore). A log from which a line was cut leaves
//! its generation unaccounted for, whatever else was rewritten around it:
//! the lines' MACs cover their generations and only a quorum's keyring can
//! make one.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::ledger::{self, Entry, LedgerError, FAILED, MAX_GENERATION, WRITE};

/// The `type` of the line that records a jump of the registry's generation
/// without a record (an acknowledged rollback, a restore).
pub const RESEAL: &str = "registry_reseal";

fn reseal_mac(key: &[u8; 32], from: u64, to: u64) -> String {
    crate::core::registry::mac(
        key,
        &[
            b"keywarden/v1/registry-reseal",
            &from.to_be_bytes(),
            &to.to_be_bytes(),
        ],
    )
}

/// The line written before the registry is resealed from generation
/// `from` to `to`.
pub fn reseal(from: u64, to: u64, key: &[u8; 32]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!(RESEAL));
    m.insert("from_generation".into(), json!(from));
    m.insert("generation".into(), json!(to));
    m.insert("mac".into(), json!(reseal_mac(key, from, to)));
    m
}

/// Whether a log line is one the fold reads.
pub fn is_ledger(line: &Map<String, Value>) -> bool {
    matches!(
        line.get("type").and_then(Value::as_str),
        Some(WRITE | FAILED | RESEAL)
    )
}

fn num(l: &Map<String, Value>, name: &str) -> Option<u64> {
    l.get(name)
        .and_then(Value::as_u64)
        .filter(|g| *g <= MAX_GENERATION)
}

/// The fold (see the module documentation).
pub struct Fold<'k> {
    key: &'k [u8; 32],
    /// Generations above this one are recorded as accounted for.
    above: u64,
    voids: BTreeSet<(u64, u64)>,
    latest: BTreeMap<[u8; 16], Entry>,
    /// Generations from `above` up that a standing write accounts for.
    written: BTreeSet<u64>,
    /// (from, to] ranges that reseal lines account for.
    reseals: Vec<(u64, u64)>,
    /// Lines refused (a MAC that does not verify, a field missing): the
    /// first few, and how many.
    pub refused: Vec<LedgerError>,
    /// Lines refused in all.
    pub refused_count: u64,
}

impl<'k> Fold<'k> {
    /// A fold of lines MAC'd under the registry key `key`, accounting for
    /// the generations above `above` (the registry's own).
    pub fn new(key: &'k [u8; 32], above: u64) -> Self {
        Fold {
            key,
            above,
            voids: BTreeSet::new(),
            latest: BTreeMap::new(),
            written: BTreeSet::new(),
            reseals: Vec::new(),
            refused: Vec::new(),
            refused_count: 0,
        }
    }

    fn refuse(&mut self, e: LedgerError) {
        self.refused_count += 1;
        if self.refused.len() < 4 {
            self.refused.push(e);
        }
    }

    /// The first pass: void lines (checked alone, as [`ledger::latest`]
    /// checks them).
    pub fn first_pass(&mut self, seq: u64, line: &Map<String, Value>) {
        if line.get("type").and_then(Value::as_str) != Some(FAILED) {
            return;
        }
        let one = [(seq, line.clone())];
        match ledger::latest(&one, self.key, 0) {
            Ok(_) => {
                if let (Some(target), Some(generation)) =
                    (num(line, "ledger_seq"), num(line, "generation"))
                {
                    self.voids.insert((target, generation));
                }
            }
            Err(e) => self.refuse(e),
        }
    }

    /// The second pass: writes and reseals.
    pub fn second_pass(&mut self, seq: u64, line: &Map<String, Value>) {
        match line.get("type").and_then(Value::as_str) {
            Some(WRITE) => self.write(seq, line),
            Some(RESEAL) => self.reseal(seq, line),
            _ => {}
        }
    }

    fn write(&mut self, seq: u64, line: &Map<String, Value>) {
        let one = [(seq, line.clone())];
        let entry = match ledger::latest(&one, self.key, 0) {
            Ok(mut m) => match m.pop_first() {
                Some((_, e)) => e,
                None => return,
            },
            Err(e) => return self.refuse(e),
        };
        if self.voids.contains(&(seq, entry.generation)) {
            return;
        }
        if entry.generation >= self.above {
            self.written.insert(entry.generation);
        }
        // A generation is used again only after a write that did not
        // commit: on a tie, the later line is the one that did.
        let newer = self
            .latest
            .get(&entry.record.id)
            .is_none_or(|e| entry.generation >= e.generation);
        if newer {
            self.latest.insert(entry.record.id, entry);
        }
    }

    fn reseal(&mut self, seq: u64, line: &Map<String, Value>) {
        let (Some(from), Some(to)) = (num(line, "from_generation"), num(line, "generation")) else {
            return self.refuse(LedgerError::Missing {
                seq,
                kind: RESEAL,
                field: "generation",
            });
        };
        let mac = line.get("mac").and_then(Value::as_str).unwrap_or_default();
        use subtle::ConstantTimeEq;
        if !bool::from(
            reseal_mac(self.key, from, to)
                .as_bytes()
                .ct_eq(mac.as_bytes()),
        ) || to <= from
        {
            return self.refuse(LedgerError::Mac { seq, kind: RESEAL });
        }
        self.reseals.push((from, to));
    }

    /// The first generation in `(above, to]` that no verified line
    /// accounts for, and whether the registry's own generation `above` is
    /// (the log must reach back to the copy it is compared with; generation
    /// 0 is a registry that was never written).
    pub fn first_gap(&self, to: u64) -> Option<u64> {
        let anchored = self.above == 0
            || self.written.contains(&self.above)
            || self.reseals.iter().any(|(_, t)| *t == self.above);
        if !anchored {
            return Some(self.above);
        }
        // Walk the gap by the accounted generations, not one by one (a
        // reseal may jump 2^32).
        let mut g = self.above;
        while g < to {
            let next = g + 1;
            if self.written.contains(&next) {
                g = next;
                continue;
            }
            match self
                .reseals
                .iter()
                .filter(|(f, t)| *f < next && next <= *t)
                .map(|(_, t)| *t)
                .max()
            {
                Some(t) => g = t,
                None => return Some(next),
            }
        }
        None
    }

    /// The highest generation a standing line carries.
    pub fn max_generation(&self) -> u64 {
        let w = self
            .latest
            .values()
            .map(|e| e.generation)
            .max()
            .unwrap_or(0);
        let r = self.reseals.iter().map(|(_, t)| *t).max().unwrap_or(0);
        w.max(r)
    }

    /// For each key, the newest record a standing line proves.
    pub fn into_latest(self) -> BTreeMap<[u8; 16], Entry> {
        self.latest
    }
}

/// The standing record of a key, for tests.
#[cfg(test)]
fn record_of(f: &Fold<'_>, id: &[u8; 16]) -> Option<crate::core::model::KeyRecord> {
    f.latest.get(id).map(|e| e.record.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{KeyRecord, KeyState, VersionState};

    fn rec(name: &str, id: u8) -> KeyRecord {
        KeyRecord::sample(name, id, &[(1, id, VersionState::Active)])
    }

    fn fold<'k>(key: &'k [u8; 32], above: u64, lines: &[(u64, Map<String, Value>)]) -> Fold<'k> {
        let mut f = Fold::new(key, above);
        for (s, l) in lines {
            f.first_pass(*s, l);
        }
        for (s, l) in lines {
            f.second_pass(*s, l);
        }
        f
    }

    #[test]
    fn a_cut_line_leaves_its_generation_unaccounted_for() {
        let key = [3u8; 32];
        let mut gone = rec("k", 1);
        gone.state = KeyState::Destroyed;
        let lines = vec![
            (10, ledger::line(&rec("k", 1), 5, &key).unwrap()),
            (11, ledger::line(&rec("j", 2), 6, &key).unwrap()),
            (12, ledger::line(&gone, 7, &key).unwrap()),
            (13, ledger::line(&rec("j", 2), 8, &key).unwrap()),
        ];
        let f = fold(&key, 5, &lines);
        assert_eq!(f.first_gap(8), None);
        assert_eq!(
            record_of(&f, &rec("k", 1).id).unwrap().state,
            KeyState::Destroyed
        );
        // The destruction's line cut out (the rest renumbered or not).
        let cut: Vec<_> = lines.iter().filter(|(s, _)| *s != 12).cloned().collect();
        assert_eq!(fold(&key, 5, &cut).first_gap(8), Some(7));
        // A log that does not reach back to the registry's generation.
        assert_eq!(fold(&key, 5, &lines[1..]).first_gap(8), Some(5));
        // A fresh log with no lines vouches for nothing above 0...
        assert_eq!(fold(&key, 5, &[]).first_gap(5), Some(5));
        // ...and a never-written registry needs no anchor.
        assert_eq!(fold(&key, 0, &[]).first_gap(0), None);
        // Another deployment's lines account for nothing.
        let f = fold(&[4u8; 32], 5, &lines);
        assert_eq!(f.refused_count, 4);
        assert_eq!(f.first_gap(8), Some(5));
    }

    #[test]
    fn reseals_account_for_their_jump_and_voids_name_seq_and_generation() {
        let key = [3u8; 32];
        let lines = vec![
            (1, ledger::line(&rec("k", 1), 2, &key).unwrap()),
            (2, reseal(2, 1 << 32, &key)),
            (3, ledger::line(&rec("k", 1), (1 << 32) + 1, &key).unwrap()),
        ];
        let f = fold(&key, 2, &lines);
        assert_eq!(f.first_gap((1 << 32) + 1), None);
        assert_eq!(f.max_generation(), (1 << 32) + 1);
        // A forged reseal (another key) accounts for nothing.
        let forged = vec![lines[0].clone(), (2, reseal(2, 1 << 32, &[9u8; 32]))];
        assert_eq!(fold(&key, 2, &forged).first_gap(3), Some(3));

        // A void of another generation does not void the line at its seq.
        let mut destroyed = rec("k", 1);
        destroyed.state = KeyState::Destroyed;
        let lines = vec![
            (5, ledger::line(&rec("k", 1), 3, &key).unwrap()),
            (6, ledger::line(&destroyed, 4, &key).unwrap()),
            (7, ledger::failed("k", 9, 6, &key)),
        ];
        let f = fold(&key, 3, &lines);
        assert_eq!(
            record_of(&f, &destroyed.id).unwrap().state,
            KeyState::Destroyed
        );
        // The genuine void of that line does.
        let lines = vec![
            lines[0].clone(),
            lines[1].clone(),
            (7, ledger::failed("k", 4, 6, &key)),
        ];
        let f = fold(&key, 3, &lines);
        assert_eq!(
            record_of(&f, &destroyed.id).unwrap().state,
            KeyState::Active
        );
        assert_eq!(f.first_gap(4), Some(4));
    }
}
