//! A pool of signing threads, sized to the cores, for signatures too slow for the async
//! reactor (RSA). Jobs queue in arrival order and a free thread takes the next one at once.
//!
//! Measured against the alternatives (README, Performance): tokio's blocking pool runs all
//! 64 in-flight RSA signatures at once on up to 64 threads, time-sliced by the OS, so
//! every request waits for many (p99 ~55 ms at 64 in flight on 2 cores); capping it with a
//! semaphore leaves a core idle between the end of one signature and the hand-off of the
//! next; signing inline stalls the reactor. Threads that each take the next job from one
//! queue keep every core signing and serve requests in order.

use std::{
    sync::{mpsc, Arc, Mutex},
    thread,
};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool has stopped (its threads are gone); only seen during shutdown.
#[derive(Debug, thiserror::Error)]
#[error("the signing pool has stopped")]
pub struct PoolStopped;

#[derive(Debug)]
pub struct SigningPool {
    jobs: mpsc::Sender<Job>,
    threads: usize,
}

impl SigningPool {
    /// Starts `threads` signing threads (at least one).
    pub fn new(threads: usize) -> Result<SigningPool, std::io::Error> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
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
        Ok(SigningPool { jobs, threads })
    }

    /// A pool with one thread per core.
    pub fn per_core() -> Result<SigningPool, std::io::Error> {
        SigningPool::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the pool and waits for its result without blocking the reactor.
    pub async fn run<T, F>(&self, work: F) -> Result<T, PoolStopped>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                // The caller may have gone (a cancelled RPC): the result is then dropped.
                let _ = done.send(work());
            }))
            .map_err(|_| PoolStopped)?;
        result.await.map_err(|_| PoolStopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_its_own_threads_and_returns_their_results() {
        let pool = SigningPool::new(2).unwrap();
        assert_eq!(pool.threads(), 2);
        let mut results = Vec::new();
        for i in 0..16u32 {
            results.push(pool.run(move || {
                let name = thread::current().name().unwrap_or("").to_owned();
                (i * i, name)
            }));
        }
        for (i, result) in results.into_iter().enumerate() {
            let (square, thread) = result.await.unwrap();
            assert_eq!(square, (i * i) as u32);
            assert!(thread.starts_with("ta-sign-"), "{thread}");
        }
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_caller_and_the_pool_goes_on() {
        let pool = SigningPool::new(1).unwrap();
        assert!(pool.run(|| -> u8 { panic!("boom") }).await.is_err());
        // The only thread survived the panic.
        assert_eq!(pool.run(|| 1u8).await.unwrap(), 1);
    }
}
