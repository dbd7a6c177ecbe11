//! The data path's worker threads: micro-batching without waiting.
//!
//! A fixed set of threads, one per HSM worker session, runs the data-key
//! and MAC calls' core work (policy check, HSM, blob). A lone call runs at
//! once; under load a call queued while every worker is busy wakes nobody,
//! and a worker that finishes a call takes the next queued one without
//! sleeping, so the calls queued during a burst run back to back for one
//! wake-up (tokio's blocking pool, used before, woke one of its many idle
//! threads for nearly every call), and no more threads than sessions
//! compete for the cores. A worker takes one call at a time from the shared
//! queue: a call stuck in the HSM holds only its own worker, never calls
//! that another worker could run.
//!
//! Administrative calls (backup, seal, rekey) keep `spawn_blocking`: they
//! are rare and may take long, and must not hold a data-path worker.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::GateError;
use crate::sync::Recover;

type Job<C> = Box<dyn FnOnce(&C) + Send>;

struct Queue<C> {
    jobs: VecDeque<Job<C>>,
    /// Workers waiting for work: a push wakes one only if one is waiting
    /// and not already woken (`waking`), so a burst of k calls wakes at
    /// most k workers, and a call queued while all are busy wakes none.
    idle: usize,
    waking: usize,
    stopping: bool,
}

struct Shared<C> {
    queue: Mutex<Queue<C>>,
    ready: Condvar,
}

impl<C> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, Queue<C>> {
        self.queue.locked()
    }
}

/// The handle the services share; the threads stop when it is dropped or
/// at [`Workers::shutdown`]. `C` is what the calls run on (the core).
pub struct Workers<C> {
    shared: Arc<Shared<C>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl<C: Send + Sync + 'static> Workers<C> {
    /// Starts `threads` workers (at least one) over `core`.
    pub fn start(core: Arc<C>, threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                waking: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
        });
        let workers = Workers {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
        };
        for i in 0..threads.max(1) {
            let (shared, core) = (shared.clone(), core.clone());
            // On an error the threads already started stop with `workers`.
            let t = std::thread::Builder::new()
                .name(format!("data-path-{i}"))
                .spawn(move || work(&shared, core.as_ref()))?;
            workers.threads.locked().push(t);
        }
        Ok(workers)
    }

    /// Stops the workers once the calls queued are done, and waits for
    /// them (blocking): each holds the core, which the daemon's shutdown
    /// must be the last to hold (the registry is closed when it is
    /// dropped).
    pub fn shutdown(&self) {
        self.shared.lock().stopping = true;
        self.shared.ready.notify_all();
        let threads = std::mem::take(&mut *self.threads.locked());
        for t in threads {
            let _ = t.join();
        }
    }

    /// Runs `f` on a worker and answers its result. A call whose work
    /// panicked (a bug) is answered INTERNAL; the worker goes on.
    pub async fn run<T, F>(&self, f: F) -> Result<T, GateError>
    where
        T: Send + 'static,
        F: FnOnce(&C) -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job<C> = Box::new(move |core| {
            // A caller that has gone (cancelled, timed out) is not served:
            // no HSM work that nobody would answer or audit.
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f(core));
        });
        {
            let mut q = self.shared.lock();
            if q.stopping {
                return Err(GateError::Stopping);
            }
            q.jobs.push_back(job);
            if q.idle > q.waking {
                q.waking += 1;
                self.shared.ready.notify_one();
            }
        }
        rx.await.map_err(|_| {
            tracing::error!("data-path call failed in its worker");
            GateError::WorkerFailed
        })
    }
}

impl<C> Drop for Workers<C> {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.ready.notify_all();
    }
}

fn work<C>(shared: &Shared<C>, core: &C) {
    loop {
        let job: Job<C> = {
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
            let Some(job) = q.jobs.pop_front() else {
                continue;
            };
            // More is queued and a worker is idle: it takes the next call
            // in parallel, on its own session (a network HSM serves its
            // sessions in parallel).
            if !q.jobs.is_empty() && q.idle > q.waking {
                q.waking += 1;
                shared.ready.notify_one();
            }
            job
        };
        // A panic drops the job's answer channel: its caller gets
        // INTERNAL, and the worker goes on.
        let _ = catch_unwind(AssertUnwindSafe(|| job(core)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Runs a call on `w` that signals when it has started and then waits
    /// for `release`: the worker is busy until then.
    async fn occupy<C: Send + Sync + 'static>(
        w: &Arc<Workers<C>>,
    ) -> (
        tokio::task::JoinHandle<Result<(), GateError>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let w = w.clone();
        let busy = tokio::spawn(async move {
            w.run(move |_: &C| {
                let _ = started_tx.send(());
                let _ = release_rx.recv_timeout(std::time::Duration::from_secs(60));
            })
            .await
        });
        tokio::time::timeout(std::time::Duration::from_secs(60), started_rx)
            .await
            .unwrap()
            .unwrap();
        (busy, release_tx)
    }

    /// Calls 0..n, each answering its own number.
    fn numbered(
        w: &Arc<Workers<()>>,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<Result<usize, GateError>>> {
        (0..n)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.run(move |_: &()| i).await })
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_call_gets_its_own_answer_and_a_panic_is_internal() {
        let ran = Arc::new(AtomicUsize::new(0));
        let w = Arc::new(Workers::start(ran.clone(), 2).unwrap());
        let mut calls = Vec::new();
        for i in 0..200u64 {
            let w = w.clone();
            calls.push(tokio::spawn(async move {
                w.run(move |n: &AtomicUsize| {
                    n.fetch_add(1, Ordering::SeqCst);
                    i * 2
                })
                .await
            }));
        }
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap(), i as u64 * 2);
        }
        assert_eq!(ran.load(Ordering::SeqCst), 200);
        // A call that panics is answered INTERNAL; the worker goes on.
        let e = w
            .run(|_: &AtomicUsize| -> u8 { panic!("a bug in a call") })
            .await
            .unwrap_err();
        assert_eq!(super::super::Answer::code(&e), super::super::Code::Internal);
        assert_eq!(
            w.run(|n: &AtomicUsize| n.load(Ordering::SeqCst))
                .await
                .unwrap(),
            200
        );
    }

    #[tokio::test]
    async fn a_burst_queued_behind_a_busy_worker_is_taken_and_answered() {
        // One worker, kept busy while 40 calls queue behind it: it then
        // takes them one after another without sleeping, and each gets its
        // own answer.
        let w = Arc::new(Workers::start(Arc::new(()), 1).unwrap());
        let (busy, release) = occupy(&w).await;
        let rest = numbered(&w, 40);
        while w.shared.lock().jobs.len() < 40 {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        for (i, r) in rest.into_iter().enumerate() {
            assert_eq!(r.await.unwrap().unwrap(), i);
        }
        assert!(w.shared.lock().jobs.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_call_holds_only_its_own_worker() {
        // Two workers; one is stuck. Calls queued meanwhile all run on the
        // other, none waits behind the stuck one.
        let w = Arc::new(Workers::start(Arc::new(()), 2).unwrap());
        let (stuck, release) = occupy(&w).await;
        let calls = numbered(&w, 20);
        for (i, c) in calls.into_iter().enumerate() {
            let r = tokio::time::timeout(std::time::Duration::from_secs(60), c)
                .await
                .unwrap();
            assert_eq!(r.unwrap().unwrap(), i);
        }
        release.send(()).unwrap();
        stuck.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn calls_after_the_stop_are_refused() {
        let core = Arc::new(());
        let w = Workers::start(core.clone(), 2).unwrap();
        assert_eq!(w.run(|_: &()| 1).await.unwrap(), 1);
        w.shutdown();
        // The threads are gone, and with them their hold on the core.
        assert_eq!(Arc::strong_count(&core), 1);
        let e = w.run(|_: &()| 1).await.unwrap_err();
        assert_eq!(
            super::super::Answer::code(&e),
            super::super::Code::Unavailable
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_is_shared_among_idle_workers() {
        // Four idle workers, eight calls that each wait until four are
        // running at once: they finish only if the burst is shared out
        // (one worker running it alone would never see four running).
        let running = Arc::new((Mutex::new(0usize), Condvar::new()));
        let w = Arc::new(Workers::start(running.clone(), 4).unwrap());
        while w.shared.lock().idle < 4 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let mut calls = Vec::new();
        for _ in 0..8 {
            let w = w.clone();
            calls.push(tokio::spawn(async move {
                w.run(|r: &(Mutex<usize>, Condvar)| {
                    let (n, cv) = r;
                    let mut n = n.lock().unwrap();
                    *n += 1;
                    cv.notify_all();
                    let (n, timeout) = cv
                        .wait_timeout_while(n, std::time::Duration::from_secs(30), |n| *n < 4)
                        .unwrap();
                    !timeout.timed_out() && *n >= 4
                })
                .await
            }));
        }
        for c in calls {
            assert!(c.await.unwrap().unwrap(), "four calls ran at once");
        }
    }

    #[tokio::test]
    async fn a_call_whose_caller_has_gone_is_not_run() {
        let ran = Arc::new(AtomicUsize::new(0));
        let w = Arc::new(Workers::start(ran.clone(), 1).unwrap());
        let (busy, release) = occupy(&w).await;
        // Queued behind the busy worker, then abandoned.
        let gone = {
            let w = w.clone();
            tokio::spawn(async move {
                w.run(|n: &AtomicUsize| n.fetch_add(1, Ordering::SeqCst))
                    .await
            })
        };
        while w.shared.lock().jobs.is_empty() {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        // A later call runs, and the abandoned one never did.
        assert_eq!(
            w.run(|n: &AtomicUsize| n.load(Ordering::SeqCst))
                .await
                .unwrap(),
            0
        );
    }
}
