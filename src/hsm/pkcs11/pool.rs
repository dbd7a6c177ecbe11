//! The bounded pool of worker sessions, checked out per operation; a
//! transient failure retires the session it happened on.

use super::*;
use crate::sync::Recover;

/// How long an operation waits for a free worker session.
pub(super) const POOL_WAIT: Duration = Duration::from_secs(10);

/// A bounded pool of worker sessions.
pub(super) struct SessionPool {
    pub(super) sessions: Mutex<Vec<Session>>,
    pub(super) available: Condvar,
    /// Which login this pool belongs to: a failure on an older one (after a
    /// recovery) says nothing about the current one.
    pub(super) generation: u32,
}

pub(super) struct PooledSession<'a> {
    pub(super) pool: &'a SessionPool,
    pub(super) hsm: &'a Pkcs11Hsm,
    pub(super) session: Option<Session>,
    pub(super) broken: bool,
}

impl SessionPool {
    pub(super) fn open(ctx: &Pkcs11, slot: Slot, size: usize, generation: u32) -> HsmResult<Self> {
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            sessions.push(ctx.open_rw_session(slot).map_err(ck)?);
        }
        Ok(SessionPool {
            sessions: Mutex::new(sessions),
            available: Condvar::new(),
            generation,
        })
    }

    pub(super) fn get<'a>(&'a self, hsm: &'a Pkcs11Hsm) -> HsmResult<PooledSession<'a>> {
        let mut guard = self.sessions.locked();
        let deadline = std::time::Instant::now() + POOL_WAIT;
        loop {
            if let Some(session) = guard.pop() {
                return Ok(PooledSession {
                    pool: self,
                    hsm,
                    session: Some(session),
                    broken: false,
                });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(HsmError::PoolExhausted(POOL_WAIT.as_secs()));
            }
            guard = self
                .available
                .wait_timeout(guard, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }
}

impl PooledSession<'_> {
    pub(super) fn session(&self) -> HsmResult<&Session> {
        self.session
            .as_ref()
            .ok_or_else(|| HsmError::Unexpected("pooled session missing".into()))
    }

    /// Records an error; a transient one retires this session, and one
    /// that means the token is gone marks the HSM lost.
    pub(super) fn note(&mut self, e: HsmError) -> HsmError {
        if e.class() == ErrorClass::Transient {
            self.broken = true;
        }
        self.hsm.note_loss(&e, self.pool.generation);
        e
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        let mut session = self.session.take();
        if self.broken {
            drop(session.take());
            // Replace it so the pool keeps its size; if the token is gone this
            // fails and the pool shrinks (recovery builds a new pool).
            if !self.hsm.is_lost() {
                session = self.hsm.ctx.open_rw_session(self.hsm.slot()).ok();
            }
        }
        if let Some(s) = session {
            self.pool.sessions.locked().push(s);
            self.pool.available.notify_one();
        }
    }
}
