//! The writer thread: gathers queued lines into group commits (write and
//! fdatasync), chains and checkpoints them, rotates the file, and hands
//! each durable line to the forwarder.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::Digest;

use super::*;
use crate::sync::Recover;

pub(super) struct Writer {
    pub(super) config: AuditConfig,
    pub(super) file: Option<(File, u64, u64)>, // file, inode, device
    pub(super) size: u64,
    pub(super) seq: u64,
    pub(super) prev: String,
    pub(super) since_checkpoint: u64,
    pub(super) last_was_checkpoint: bool,
    pub(super) shared: Arc<Shared>,
}

/// What [`gather`] took: the jobs, and how long each entry waited in the
/// queue before the writer had it.
#[derive(Default)]
pub(super) struct Gathered {
    pub(super) jobs: Vec<Job>,
    pub(super) waits: Vec<std::time::Duration>,
    /// A thread is blocked on one of the jobs (a synchronous entry, a
    /// checkpoint, the head): the commit does not wait for more.
    blocking: bool,
}

impl Gathered {
    fn take(&mut self, mut job: Job) {
        match &mut job {
            Job::Entry(e) => {
                self.waits.push(e.queued.elapsed());
                // The line is here: it is no longer promised.
                drop(e.promise.take());
                self.blocking |= matches!(e.ack, Ack::Sync(_));
            }
            Job::Checkpoint(..) | Job::Head(_) => self.blocking = true,
        }
        self.jobs.push(job);
    }
}

/// Takes what is queued after `first`, then, while calls in progress have
/// promised lines (`promised`), waits for them up to `window`. It stops
/// waiting once a job a thread is blocked on is among them (that thread
/// may itself hold a promise that this commit would wait out).
pub(super) fn gather(
    rx: &Receiver<Job>,
    first: Job,
    promised: &std::sync::atomic::AtomicUsize,
    window: std::time::Duration,
) -> Gathered {
    use std::sync::atomic::Ordering;
    use std::sync::mpsc::RecvTimeoutError;
    let mut g = Gathered::default();
    g.take(first);
    let start = std::time::Instant::now();
    loop {
        while g.jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => g.take(j),
                Err(_) => break,
            }
        }
        let left = window.saturating_sub(start.elapsed());
        if g.jobs.len() >= MAX_BATCH
            || g.blocking
            || promised.load(Ordering::Acquire) == 0
            || left.is_zero()
        {
            return g;
        }
        match rx.recv_timeout(left.min(GATHER_SLICE)) {
            Ok(j) => g.take(j),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return g,
        }
    }
}

impl Writer {
    fn ensure_open(&mut self) -> Result<(), AuditError> {
        let path = &self.config.file;
        // Reopen when the path now names another file (rotated, replaced,
        // removed) so that a fixed path resumes the log.
        let current = std::fs::metadata(path).ok().map(|m| (m.ino(), m.dev()));
        if let Some((_, ino, dev)) = &self.file {
            if current == Some((*ino, *dev)) {
                return Ok(());
            }
        }
        self.file = None;
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(AuditError::io("opening", path))?;
        let m = f.metadata().map_err(AuditError::io("stat", path))?;
        self.size = m.len();
        self.file = Some((f, m.ino(), m.dev()));
        Ok(())
    }

    pub(super) fn line_for(&self, fields: &mut Map<String, Value>, seq: u64, prev: &str) -> String {
        fields.insert("seq".into(), json!(seq));
        fields.insert(
            "registry_generation".into(),
            json!(self
                .shared
                .registry_generation
                .load(std::sync::atomic::Ordering::Acquire)),
        );
        fields.insert("prev".into(), json!(prev));
        fields.entry("time").or_insert_with(|| json!(now_text()));
        if let Some(n) = &self.config.node {
            fields.insert("node".into(), json!(n));
        }
        canonical(fields)
    }

    /// Writes lines durably; on failure nothing advances. `severities`
    /// (one per line, or none: all routine) tell the forwarder which lines
    /// to keep when its queue is full.
    pub(super) fn commit(
        &mut self,
        lines: &[String],
        severities: &[severity::Severity],
    ) -> Result<(), AuditError> {
        let start = std::time::Instant::now();
        let r = self.commit_untimed(lines, severities);
        if let Some(m) = self.shared.metrics() {
            m.audit_commit(lines.len(), start.elapsed(), r.is_ok());
        }
        r
    }

    fn commit_untimed(
        &mut self,
        lines: &[String],
        severities: &[severity::Severity],
    ) -> Result<(), AuditError> {
        self.ensure_open()?;
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for l in lines {
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
        }
        let before = self.size;
        let Some((f, _, _)) = self.file.as_mut() else {
            return Err(AuditError::NotOpen);
        };
        let r = f.write_all(&buf).and_then(|_| f.sync_data());
        if let Err(e) = r {
            // Nothing of a failed batch may stay behind: cut it off (a
            // device that refuses writes refuses this too, harmlessly).
            let _ = f.set_len(before);
            self.file = None;
            return Err(AuditError::io("writing", &self.config.file)(e));
        }
        self.size += buf.len() as u64;
        if let Some(f) = &self.shared.forward {
            for (i, l) in lines.iter().enumerate() {
                let sev = severities
                    .get(i)
                    .copied()
                    .unwrap_or(severity::Severity::Informational);
                f.offer(l, sev);
            }
        }
        Ok(())
    }

    fn set_health(&self, h: Result<(), AuditError>) {
        *self.shared.health.locked() = h;
    }

    fn write_entries(&mut self, entries: Vec<(Map<String, Value>, Ack)>) {
        let mut lines = Vec::with_capacity(entries.len());
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let mut seqs = Vec::with_capacity(entries.len());
        let mut acks = Vec::with_capacity(entries.len());
        let forwarding = self.shared.forward.is_some();
        let mut severities = Vec::with_capacity(if forwarding { entries.len() } else { 0 });
        for (mut fields, ack) in entries {
            acks.push(ack);
            if forwarding {
                severities.push(severity::of_fields(&fields));
            }
            let line = self.line_for(&mut fields, seq, &prev);
            prev = sha256_hex(line.as_bytes());
            seqs.push(seq);
            seq += 1;
            lines.push(line);
        }
        match self.commit(&lines, &severities) {
            Ok(()) => {
                self.seq = seq;
                self.prev = prev;
                self.since_checkpoint += lines.len() as u64;
                self.last_was_checkpoint = false;
                self.set_health(Ok(()));
                for (ack, s) in acks.into_iter().zip(seqs) {
                    ack.send(Ok(s));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit write failed; key operations are refused until it works");
                self.set_health(Err(e.clone()));
                for ack in acks {
                    ack.send(Err(AuditError::Unwritable(Box::new(e.clone()))));
                }
            }
        }
    }

    pub(super) fn checkpoint(&mut self, reason: &str) -> Result<u64, AuditError> {
        let signer = self.shared.signer.locked().clone();
        let Some(signer) = signer else {
            return Err(AuditError::NoSigner);
        };
        let mut body = Map::new();
        body.insert("type".into(), json!("checkpoint"));
        body.insert("reason".into(), json!(reason));
        body.insert("entries_since_last".into(), json!(self.since_checkpoint));
        body.insert(
            "registry_generation".into(),
            json!(self
                .shared
                .registry_generation
                .load(std::sync::atomic::Ordering::Acquire)),
        );
        body.insert("seq".into(), json!(self.seq));
        body.insert("prev".into(), json!(self.prev));
        body.insert("time".into(), json!(now_text()));
        if let Some(n) = &self.config.node {
            body.insert("node".into(), json!(n));
        }
        let digest: [u8; 32] = Sha256::digest(canonical(&body).as_bytes()).into();
        let sig = signer(&digest).map_err(AuditError::Signing)?;
        body.insert("sig".into(), json!(hex::encode(sig)));
        let line = canonical(&body);
        self.commit(std::slice::from_ref(&line), &[]).map_err(|e| {
            self.set_health(Err(e.clone()));
            AuditError::Unwritable(Box::new(e))
        })?;
        let s = self.seq;
        self.seq += 1;
        self.prev = sha256_hex(line.as_bytes());
        self.since_checkpoint = 0;
        self.last_was_checkpoint = true;
        Ok(s)
    }

    fn maybe_rotate(&mut self) {
        if self.size < self.config.max_file_bytes || !self.last_was_checkpoint {
            return;
        }
        let dir = self.config.file.parent().unwrap_or(Path::new("."));
        let rotated = dir.join(format!("audit-{:012}.log", self.seq.saturating_sub(1)));
        match std::fs::rename(&self.config.file, &rotated) {
            Ok(()) => {
                self.file = None;
                tracing::info!(file = %rotated.display(), "audit log rotated");
            }
            Err(e) => tracing::warn!(error = %e, "audit log rotation failed"),
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let Gathered { jobs, waits, .. } = gather(&rx, first, &self.shared.promised, GATHER);
            let metrics = self.shared.metrics();
            if let Some(m) = &metrics {
                m.audit_queued(-(jobs.len() as i64));
                m.audit_waited(waits.into_iter());
            }
            let mut entries = Vec::new();
            let mut checkpoints = Vec::new();
            let mut heads = Vec::new();
            for j in jobs {
                match j {
                    Job::Entry(e) => entries.push((e.fields, e.ack)),
                    Job::Checkpoint(reason, ack) => checkpoints.push((reason, ack)),
                    Job::Head(ack) => heads.push(ack),
                }
            }
            if !entries.is_empty() {
                self.write_entries(entries);
            }
            for (reason, ack) in checkpoints {
                let r = self.checkpoint(&reason);
                ack.send(r);
            }
            for ack in heads {
                let _ = ack.send((self.seq.saturating_sub(1), self.prev.clone()));
            }
            if self.since_checkpoint >= self.config.checkpoint_every {
                if let Err(e) = self.checkpoint("interval") {
                    tracing::debug!(error = %e, "interval checkpoint deferred");
                }
            }
            self.maybe_rotate();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A line whose caller waits asynchronously (no thread blocked on it).
    fn line() -> Job {
        Job::Entry(Entry::new(
            Map::new(),
            Ack::Async(tokio::sync::oneshot::channel().0),
            None,
        ))
    }

    fn open_in(dir: &Path) -> Audit {
        Audit::open(AuditConfig {
            file: dir.join("audit.log"),
            checkpoint_every: 1000,
            max_file_bytes: 1 << 30,
            forward: None,
            node: None,
        })
        .unwrap()
    }

    #[test]
    fn with_nothing_promised_a_line_is_committed_at_once() {
        let (tx, rx) = channel();
        tx.send(line()).unwrap();
        let promised = AtomicUsize::new(0);
        // Nothing promised: no wait (a wait would last the whole minute).
        let start = std::time::Instant::now();
        let jobs = gather(&rx, line(), &promised, Duration::from_secs(60)).jobs;
        assert_eq!(jobs.len(), 2, "the first and what was queued");
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn promised_lines_join_the_commit_and_the_wait_ends_when_they_are_in() {
        let dir = tempfile::tempdir().unwrap();
        let audit = open_in(dir.path());
        let (tx, rx) = channel();
        // Three calls in progress, whose lines come later, each carrying
        // its promise (as `queue_async` sends them).
        let promises: Vec<Promise> = (0..3).map(|_| audit.promise()).collect();
        let sender = std::thread::spawn(move || {
            let mut answers = Vec::new();
            for p in promises {
                std::thread::sleep(Duration::from_millis(5));
                let (ack, answer) = tokio::sync::oneshot::channel();
                tx.send(Job::Entry(Entry::new(Map::new(), Ack::Async(ack), Some(p))))
                    .unwrap();
                answers.push(answer);
            }
            // Kept open: the gather must end on the promises, not on a
            // closed channel.
            (tx, answers)
        });
        let start = std::time::Instant::now();
        let jobs = gather(&rx, line(), &audit.state.promised, Duration::from_secs(60)).jobs;
        assert_eq!(jobs.len(), 4);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "it ended on the promises"
        );
        drop(sender.join().unwrap());
    }

    #[test]
    fn a_line_that_has_arrived_is_no_longer_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let audit = open_in(dir.path());
        let (_tx, rx) = channel::<Job>();
        let (ack, _answer) = tokio::sync::oneshot::channel();
        let line = Job::Entry(Entry::new(
            Map::new(),
            Ack::Async(ack),
            Some(audit.promise()),
        ));
        // Its own promise travels with it: taking it releases the promise,
        // so the writer does not wait out the window for it.
        let start = std::time::Instant::now();
        let g = gather(&rx, line, &audit.state.promised, Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(g.jobs.len(), 1);
        assert_eq!(g.waits.len(), 1);
        assert_eq!(audit.state.promised.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_blocking_writer_ends_the_wait() {
        // A synchronous entry (a thread blocked on it, perhaps holding a
        // promise of its own) is committed without waiting; so is a
        // checkpoint or a request for the head.
        for job in [
            Job::Head(channel().0),
            Job::Checkpoint("test".into(), Ack::Sync(channel().0)),
        ] {
            let (_tx, rx) = channel::<Job>();
            let promised = AtomicUsize::new(1);
            let start = std::time::Instant::now();
            assert_eq!(
                gather(&rx, job, &promised, Duration::from_secs(60))
                    .jobs
                    .len(),
                1
            );
            assert!(start.elapsed() < Duration::from_secs(30));
        }
        let (_tx, rx) = channel::<Job>();
        let promised = AtomicUsize::new(1);
        let line = Job::Entry(Entry::new(Map::new(), Ack::Sync(channel().0), None));
        let start = std::time::Instant::now();
        let g = gather(&rx, line, &promised, Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
        assert_eq!(g.jobs.len(), 1);
    }

    #[test]
    fn the_wait_for_promised_lines_is_bounded() {
        let (tx, rx) = channel::<Job>();
        let promised = AtomicUsize::new(1);
        let jobs = gather(&rx, line(), &promised, Duration::from_millis(20)).jobs;
        assert_eq!(
            jobs.len(),
            1,
            "a promise never kept does not hold the commit"
        );
        drop(tx);
    }

    #[test]
    fn a_promise_counts_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let audit = open_in(dir.path());
        let (a, b) = (audit.promise(), audit.promise());
        assert_eq!(audit.state.promised.load(Ordering::Acquire), 2);
        drop(a);
        drop(b);
        assert_eq!(audit.state.promised.load(Ordering::Acquire), 0);
    }
}
