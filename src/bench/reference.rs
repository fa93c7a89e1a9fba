//! The raw ceiling: how many signatures or verifications per second this machine does with
//! the crypto provider alone, on every core, with no server, network or serialisation.

use std::time::{Duration, Instant};

use super::BenchError;
use token_authority_jose::crypto::{generate_pkcs8, Algorithm, SigningKey};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Operation {
    Sign,
    Verify,
}

/// Operations per second summed over one thread per core, for `duration`.
pub(crate) fn ops_per_second(
    alg: Algorithm,
    operation: Operation,
    duration: Duration,
) -> Result<f64, BenchError> {
    let der = generate_pkcs8(alg).map_err(|e| BenchError::Prepare(e.to_string()))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // A realistic signing input: a JWS header and payload of the size IssueToken makes.
    let message = vec![b'a'; 300];
    let total: Result<u64, BenchError> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let der = &der;
                let message = &message;
                scope.spawn(move || -> Result<u64, BenchError> {
                    let key = SigningKey::from_pkcs8(alg, der)
                        .map_err(|e| BenchError::Prepare(e.to_string()))?;
                    let verifier = key
                        .verifying_key()
                        .map_err(|e| BenchError::Prepare(e.to_string()))?;
                    let signature = key
                        .sign(message)
                        .map_err(|e| BenchError::Prepare(e.to_string()))?;
                    let deadline = Instant::now() + duration;
                    let mut count = 0u64;
                    while Instant::now() < deadline {
                        match operation {
                            Operation::Sign => {
                                key.sign(message)
                                    .map_err(|e| BenchError::Prepare(e.to_string()))?;
                            }
                            Operation::Verify => {
                                if !verifier.verify(message, &signature) {
                                    return Err(BenchError::Prepare(
                                        "a reference verification failed".into(),
                                    ));
                                }
                            }
                        }
                        count += 1;
                    }
                    Ok(count)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .map_err(|_| BenchError::Prepare("a reference thread panicked".into()))?
            })
            .sum()
    });
    Ok(total? as f64 / duration.as_secs_f64())
}
