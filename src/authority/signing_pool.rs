//! A pool of signing threads, sized to the cores, for signatures too slow for the async
//! reactor (RSA). Jobs queue in arrival order and a free thread takes the next one at once.
//!
//! Measured against the alternatives (README, Performance): tokio's blocking pool runs all
//! 64 in-flight RSA signatures at once on up to 64 threads, time-sliced by the OS, so
//! every request waits for many (p99 ~55 ms at 64 in flight on 2 cores); capping it with a
//! semaphore leaves a core idle between the end of one signature and the hand-off of the
//! next; signing inline stalls the reactor. Threads that each take the next job from one
//! queue keep every core signing and serve requests in order.
//!
//! The queue is bounded: past `QUEUED_PER_THREAD` jobs a thread, a new job is refused at once
//! (the caller answers RESOURCE_EXHAUSTED and retries later) rather than waiting behind
//! seconds of work for a client that has likely given up. A job whose caller has gone (a
//! cancelled or timed-out RPC) is skipped when its turn comes, so a burst of abandoned
//! requests costs no signatures.

use std::{
    sync::{mpsc, Arc, Mutex},
    thread,
    time::Duration,
};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// How many jobs may wait per signing thread: about 60 ms of RSA-2048 signatures.
pub(crate) const QUEUED_PER_THREAD: usize = 128;

/// How long a caller waits for its signature, queue included. A full queue of RSA
/// signatures is some 60 ms and a network HSM answers in well under a second: past this, the
/// signer has stopped answering (a hung device), and the caller is told so rather than held
/// until its own deadline. The signature, if it ever comes, is thrown away.
pub(crate) const SIGN_DEADLINE: Duration = Duration::from_secs(5);

/// Why a job was not run.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PoolError {
    /// The queue is full: the server is signing as fast as it can.
    #[error("the server is busy signing: {0} requests are waiting; retry with backoff")]
    Busy(usize),
    /// The pool has stopped (its threads are gone); only seen during shutdown.
    #[error("the signing pool has stopped")]
    Stopped,
    /// No signature within the deadline: the signer has stopped answering.
    #[error("the signer did not answer within {0:?}; nothing was issued, and a retry is safe")]
    TimedOut(Duration),
}

#[derive(Debug)]
pub struct SigningPool {
    jobs: mpsc::SyncSender<Job>,
    capacity: usize,
    deadline: Duration,
}

impl SigningPool {
    /// Starts `threads` signing threads (at least one), with room for `QUEUED_PER_THREAD`
    /// waiting jobs each.
    pub(crate) fn new(threads: usize) -> Result<SigningPool, std::io::Error> {
        let threads = threads.max(1);
        SigningPool::with_capacity(threads, threads * QUEUED_PER_THREAD)
    }

    /// Starts `threads` signing threads with room for `capacity` waiting jobs.
    pub(crate) fn with_capacity(
        threads: usize,
        capacity: usize,
    ) -> Result<SigningPool, std::io::Error> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::sync_channel::<Job>(capacity);
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..threads {
            let queue = Arc::clone(&queue);
            thread::Builder::new()
                .name(format!("ta-sign-{index}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job, never while
                    // running one; a poisoned lock means another thread panicked inside
                    // `recv`, which does not leave the queue inconsistent.
                    let next = queue
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .recv();
                    match next {
                        // A panicking job fails its own caller (its result sender is
                        // dropped) and must not take a signing thread with it.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(mpsc::RecvError) => return,
                    }
                })?;
        }
        Ok(SigningPool {
            jobs,
            capacity,
            deadline: SIGN_DEADLINE,
        })
    }

    /// The same pool, its callers waiting `deadline` at most.
    #[cfg(test)]
    fn with_deadline(self, deadline: Duration) -> SigningPool {
        SigningPool { deadline, ..self }
    }

    /// A pool with one thread per core.
    pub fn per_core() -> Result<SigningPool, std::io::Error> {
        SigningPool::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Queues `work` on the pool at once (a full queue refuses it at once) and returns the
    /// wait for its result, which does not block the reactor.
    pub(crate) fn run<T, F>(
        &self,
        work: F,
    ) -> impl std::future::Future<Output = Result<T, PoolError>> + Send + 'static
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller has gone (a cancelled RPC): nobody would read the signature.
            if done.is_closed() {
                return;
            }
            let _ = done.send(work());
        });
        let queued = self.jobs.try_send(job).map_err(|error| match error {
            mpsc::TrySendError::Full(_) => PoolError::Busy(self.capacity),
            mpsc::TrySendError::Disconnected(_) => PoolError::Stopped,
        });
        let deadline = self.deadline;
        async move {
            queued?;
            // On time out `result` is dropped: the job is skipped if it has not started.
            match tokio::time::timeout(deadline, result).await {
                Ok(done) => done.map_err(|_| PoolError::Stopped),
                Err(_) => Err(PoolError::TimedOut(deadline)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_its_own_threads_and_returns_their_results() {
        let pool = SigningPool::new(2).unwrap();
        let mut results = Vec::new();
        for i in 0..16u32 {
            results.push(pool.run(move || {
                let name = thread::current().name().unwrap_or("").to_owned();
                (i * i, name)
            }));
        }
        let mut threads = std::collections::BTreeSet::new();
        for (i, result) in results.into_iter().enumerate() {
            let (square, thread) = result.await.unwrap();
            assert_eq!(square, (i * i) as u32);
            threads.insert(thread);
        }
        // Its own two threads, and no others.
        assert!(
            threads
                .iter()
                .all(|t| ["ta-sign-0", "ta-sign-1"].contains(&t.as_str())),
            "{threads:?}"
        );
    }

    /// One thread held busy: two jobs wait, the third is refused at once; a job whose
    /// caller went away is skipped.
    #[tokio::test]
    async fn a_full_queue_refuses_and_abandoned_jobs_are_skipped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = SigningPool::with_capacity(1, 2).unwrap();
        let (release, gate) = mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let blocker = tokio::spawn(pool.run(move || {
            let _ = started.send(());
            let _ = gate.recv();
        }));
        running.await.unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let job = |ran: &Arc<AtomicUsize>| {
            let ran = Arc::clone(ran);
            move || ran.fetch_add(1, Ordering::SeqCst)
        };
        // Queued, then abandoned by its caller before the thread is free.
        let abandoned = tokio::spawn(pool.run(job(&ran)));
        let waiting = tokio::spawn(pool.run(job(&ran)));
        assert_eq!(pool.run(job(&ran)).await, Err(PoolError::Busy(2)));
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        release.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        assert_eq!(waiting.await.unwrap(), Ok(0));
        // Only the job whose caller waited ran.
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(pool.run(job(&ran)).await, Ok(1));
    }

    /// A signature that does not come (a hung device) fails its caller at the deadline;
    /// a job queued behind it whose caller gave up meanwhile is skipped.
    #[tokio::test]
    async fn a_signer_that_stops_answering_fails_its_callers_at_the_deadline() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let deadline = Duration::from_millis(200);
        let pool = SigningPool::new(1).unwrap().with_deadline(deadline);
        let (release, gate) = mpsc::channel::<()>();
        let hung = pool.run(move || {
            let _ = gate.recv();
        });
        let ran = Arc::new(AtomicBool::new(false));
        let behind = {
            let ran = Arc::clone(&ran);
            pool.run(move || ran.store(true, Ordering::SeqCst))
        };
        let started = std::time::Instant::now();
        assert_eq!(hung.await, Err(PoolError::TimedOut(deadline)));
        assert_eq!(behind.await, Err(PoolError::TimedOut(deadline)));
        assert!(started.elapsed() < deadline * 5, "{:?}", started.elapsed());
        release.send(()).unwrap();
        assert_eq!(pool.run(|| 7u8).await, Ok(7));
        assert!(
            !ran.load(Ordering::SeqCst),
            "a job nobody waits for was run"
        );
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_caller_and_the_pool_goes_on() {
        let pool = SigningPool::new(1).unwrap();
        assert_eq!(
            pool.run(|| -> u8 { panic!("boom") }).await,
            Err(PoolError::Stopped)
        );
        // The only thread survived the panic.
        assert_eq!(pool.run(|| 1u8).await.unwrap(), 1);
    }
}
