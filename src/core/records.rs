//! The registry's records: the verified table in memory, and the one
//! write path (the ledger line first, then the database, then the HSM
//! counter, then the table and the client caches).

use super::*;

impl Records<'_> {
    pub(crate) fn registry_key(&self) -> CoreResult<zeroize::Zeroizing<[u8; 32]>> {
        self.seal
            .with_keyring(|k| zeroize::Zeroizing::new(*k.registry_key))
            .map_err(CoreError::Seal)
    }

    /// The HSM's registry generation counter, then the registry, verified.
    pub(crate) fn load_verified(&self) -> CoreResult<(Option<u64>, registry::Loaded)> {
        let key = self.registry_key()?;
        let hsm_gen = self
            .hsm
            .read_counter(REGISTRY_COUNTER_LABEL)
            .map_err(CoreError::from_hsm)?;
        let loaded = self.registry.load_verified(&key, None).map_err(reg_err)?;
        Ok((hsm_gen, loaded))
    }

    /// Loads and verifies the registry into memory (at unseal), and checks
    /// it against the witnesses of its generation ([`witness`]).
    pub(crate) fn load_table(&self) -> CoreResult<()> {
        let (hsm_gen, mut loaded) = self.load_verified()?;
        let manifest_problem = loaded.global.is_some();
        let audited = Some(self.audit.witnessed_registry_generation());
        let rollback = witness::check(loaded.generation, hsm_gen, audited);
        if loaded.global.is_none() {
            if let Some(r) = &rollback {
                loaded.global = Some(r.to_string());
            }
        }
        if loaded.global.is_none() {
            if hsm_gen.is_none_or(|h| loaded.generation > h) {
                // A fresh token (the counter is created before the first
                // registry write), or a crash between the registry commit
                // and the counter update: catch up.
                if let Err(e) = self
                    .hsm
                    .write_counter(REGISTRY_COUNTER_LABEL, loaded.generation)
                {
                    warn!(error = %e, "could not update the registry generation in the HSM");
                }
            }
            self.audit.note_registry_generation(loaded.generation);
        }
        let mut t = Table {
            global: loaded.global.clone(),
            rollback: if manifest_problem { None } else { rollback },
            ..Table::default()
        };
        for (k, what) in &loaded.tampered {
            t.tampered.insert(k.clone(), what.clone());
            self.event(
                EventKind::RegistryTampering,
                Outcome::Detected,
                serde_json::json!({"key": k, "what": what}),
            );
        }
        if let Some(g) = &loaded.global {
            self.event(
                EventKind::RegistryTampering,
                Outcome::Detected,
                serde_json::json!({"key": null, "what": g}),
            );
        }
        let mut counters = self.counters.locked();
        for r in loaded.keys {
            for v in &r.versions {
                // After a restart everything reserved counts as used.
                counters.insert(
                    v.hsm_id,
                    Counter {
                        used: v.reserved,
                        reserved: v.reserved,
                    },
                );
            }
            t.by_id.insert(r.id, r.name.clone());
            t.by_name.insert(r.name.clone(), Arc::new(r));
        }
        drop(counters);
        info!(
            keys = t.by_name.len(),
            tampered = t.tampered.len(),
            generation = loaded.generation,
            "registry verified"
        );
        *self.table.write_locked() = t;
        self.cluster().set_applied(loaded.generation);
        let _ = self.changes.send(KeyChange::Reset);
        Ok(())
    }

    /// A verified record by name.
    pub(crate) fn record(&self, name: &str) -> CoreResult<Arc<KeyRecord>> {
        let t = self.table();
        if let Some(g) = &t.global {
            return Err(CoreError::RegistryTampered {
                key: None,
                what: g.clone(),
            });
        }
        if let Some(what) = t.tampered.get(name) {
            return Err(CoreError::RegistryTampered {
                key: Some(name.to_string()),
                what: what.clone(),
            });
        }
        t.by_name
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::KeyNotFound { name: name.into() })
    }

    pub(crate) fn record_by_id(&self, id: &[u8; 16]) -> CoreResult<Arc<KeyRecord>> {
        let name = self.table().by_id.get(id).cloned();
        match name {
            Some(n) => self.record(&n),
            None => {
                let t = self.table();
                if let Some(g) = &t.global {
                    return Err(CoreError::RegistryTampered {
                        key: None,
                        what: g.clone(),
                    });
                }
                Err(CoreError::BlobKeyUnknown {
                    key_id: uuid::Uuid::from_bytes(*id).to_string(),
                })
            }
        }
    }

    /// Writes a changed (or new) record through to disk, then to memory.
    ///
    /// The audit log records the record first (the ledger line a restore
    /// replays, [`crate::backup`]): a change the log cannot hold is not
    /// made. The caller holds `writes`, so the generation is the next one.
    ///
    /// Returns the record and, in a cluster, the generation the other
    /// nodes must have applied before the caller answers: pass it to
    /// [`confirm`](Self::confirm) once `writes` is released.
    pub(crate) fn store(
        &self,
        record: KeyRecord,
        is_new: bool,
    ) -> CoreResult<(Arc<KeyRecord>, Option<u64>)> {
        let key = self.registry_key()?;
        let next = self.registry.generation().saturating_add(1);
        let ledger_seq = self
            .audit
            .record_ledger(crate::backup::ledger::line(&record, next, &key)?)
            .map_err(|e| CoreError::AuditUnavailable(e.to_string()))?;
        let gen = match self.registry.put(&record, &key, is_new) {
            Ok(g) => g,
            Err(e) => {
                // Best effort: a replay that misses this line applies a
                // change that never happened, which is the safe side for a
                // destruction or a revocation.
                let _ = self.audit.record(crate::backup::ledger::failed(
                    &record.name,
                    next,
                    ledger_seq,
                    &key,
                ));
                return Err(reg_err(e));
            }
        };
        self.audit.note_registry_generation(gen);
        self.advance_counter(gen);
        let rec = Arc::new(record);
        let mut t = self.table.write_locked();
        t.by_id.insert(rec.id, rec.name.clone());
        let old = t.by_name.insert(rec.name.clone(), rec.clone());
        drop(t);
        self.cluster().set_applied(gen);
        // Encryption-count reservations change nothing a cache depends on.
        let access_changed = old.is_none_or(|o| access_view(&o) != access_view(&rec));
        if !is_new && access_changed {
            // Before the caller's answer: a cache that hears this stops
            // using the key before the admin sees the call succeed. No
            // subscriber is not an error.
            let _ = self.changes.send(KeyChange::Changed {
                name: rec.name.clone(),
                key_id: rec.id_text(),
                state: rec.state.as_str(),
            });
        }
        // And before it, no other node serves what this replaced (a new
        // key is known everywhere when its create returns).
        let confirm = (is_new || access_changed) && self.membership.is_some();
        Ok((rec, confirm.then_some(gen)))
    }

    /// Returns once no node of the cluster can still serve the state a
    /// change replaced ([`Membership::wait_applied`]). Called without
    /// `writes` held: the wait can last up to a lease, and this node's
    /// data-key calls and its taking in of other changes go on meanwhile.
    pub(crate) fn confirm(&self, gen: Option<u64>) {
        if let (Some(g), Some(m)) = (gen, &self.membership) {
            m.wait_applied(g);
        }
    }

    /// The registry generation kept in the HSM follows the registry, with
    /// the generation this node wrote (never the database's unverified
    /// claim). The counter only moves up (the `Hsm` contract), so another
    /// node's later write stands; two nodes racing can leave it one behind
    /// until the next write (CLUSTER.md).
    pub(crate) fn advance_counter(&self, gen: u64) {
        if let Err(e) = self.hsm.write_counter(REGISTRY_COUNTER_LABEL, gen) {
            warn!(error = %e, "could not advance the registry generation in the HSM");
        }
    }

    /// Writes a new record, taking in other nodes' changes and trying
    /// again if one came first.
    pub(crate) fn store_new(&self, record: KeyRecord) -> CoreResult<(Arc<KeyRecord>, Option<u64>)> {
        self.retrying(|| {
            // After taking other nodes' changes in, the registry may be
            // found tampered with: nothing is written on top of it.
            if let Some(g) = &self.table().global {
                return Err(CoreError::RegistryTampered {
                    key: None,
                    what: g.clone(),
                });
            }
            self.store(record.clone(), true)
        })
    }

    /// Runs a write; if another node wrote first, takes that change in and
    /// runs it again (the caller holds `writes`).
    pub(crate) fn retrying<T>(&self, mut write: impl FnMut() -> CoreResult<T>) -> CoreResult<T> {
        let mut tries = 0;
        loop {
            match write() {
                Err(CoreError::RegistryMoved { .. }) if tries < WRITE_TRIES => {
                    tries += 1;
                    self.cluster().refresh_locked()?;
                }
                other => return other,
            }
        }
    }

    /// Read-modify-write of one record under the write lock.
    ///
    /// In a cluster another node may have written since this one loaded:
    /// the write is then refused, the changes are taken in and `f` runs
    /// again on the record as it now is.
    pub(crate) fn update<T>(
        &self,
        name: &str,
        mut f: impl FnMut(&mut KeyRecord) -> CoreResult<T>,
    ) -> CoreResult<(T, Arc<KeyRecord>)> {
        let w = self.writes.locked();
        let (out, (stored, confirm)) = self.retrying(|| {
            let mut rec = (*self.record(name)?).clone();
            let out = f(&mut rec)?;
            Ok((out, self.store(rec, false)?))
        })?;
        drop(w);
        self.confirm(confirm);
        Ok((out, stored))
    }
}
