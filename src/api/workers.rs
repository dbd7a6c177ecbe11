//! The data path's worker threads: micro-batching without waiting.
//!
//! A fixed set of threads, one per HSM worker session, runs the data-key
//! calls' core work (policy check, HSM, blob). A worker that wakes takes
//! every call queued up to [`BATCH`] and runs them back to back: a lone call
//! runs at once, and under load a call queued while every worker is busy
//! wakes nobody; the worker that finishes takes it without sleeping. That is
//! one thread hand-off per batch instead of one per call (tokio's blocking
//! pool, used before, woke one of its many idle threads for nearly every
//! call), and no more threads than sessions competing for the cores.
//!
//! Administrative calls (backup, seal, rekey) keep `spawn_blocking`: they
//! are rare and may take long, and must not hold a data-path worker.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tonic::Status;

use crate::core::Keywarden;

/// The most calls a worker takes at once; the rest stay for the others.
pub const BATCH: usize = 16;

type Job = Box<dyn FnOnce(&Keywarden) + Send>;

struct Queue {
    jobs: VecDeque<Job>,
    /// Workers waiting for work: a push wakes one only if one is waiting
    /// and not already woken (`waking`), so a burst wakes one worker,
    /// which takes the burst.
    idle: usize,
    waking: usize,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle the services share; the threads stop when it is dropped.
pub struct Workers {
    shared: Arc<Shared>,
}

impl Workers {
    /// Starts `threads` workers (at least one) over `core`.
    pub fn start(core: Arc<Keywarden>, threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                waking: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
        });
        for i in 0..threads.max(1) {
            let (shared, core) = (shared.clone(), core.clone());
            std::thread::Builder::new()
                .name(format!("data-path-{i}"))
                .spawn(move || work(&shared, &core))?;
        }
        Ok(Workers { shared })
    }

    /// Runs `f` on a worker and answers its result. A call whose work
    /// panicked (a bug) is answered INTERNAL; the worker goes on.
    pub async fn run<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Keywarden) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |core| {
            let _ = tx.send(f(core));
        });
        {
            let mut q = self.shared.lock();
            if q.stopping {
                return Err(Status::unavailable("the daemon is stopping"));
            }
            q.jobs.push_back(job);
            if q.idle > q.waking {
                q.waking += 1;
                self.shared.ready.notify_one();
            }
        }
        rx.await.map_err(|_| {
            tracing::error!("data-path call failed in its worker");
            Status::internal("internal error")
        })
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.ready.notify_all();
    }
}

fn work(shared: &Shared, core: &Keywarden) {
    loop {
        let batch: Vec<Job> = {
            let mut q = shared.lock();
            while q.jobs.is_empty() {
                if q.stopping {
                    return;
                }
                q.idle += 1;
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                q.idle -= 1;
                q.waking = q.waking.saturating_sub(1);
            }
            let n = q.jobs.len().min(BATCH);
            let batch = q.jobs.drain(..n).collect();
            // More than one batch queued: another worker takes the rest.
            if !q.jobs.is_empty() && q.idle > q.waking {
                q.waking += 1;
                shared.ready.notify_one();
            }
            batch
        };
        for job in batch {
            // A panic drops the job's answer channel: its caller gets
            // INTERNAL, and the rest of the batch still runs.
            let _ = catch_unwind(AssertUnwindSafe(|| job(core)));
        }
    }
}
