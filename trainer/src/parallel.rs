//! Work over independent items (cases) on a few threads, with progress, without rayon.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;

/// Runs `work` for `0..total` on `threads` workers (0: every core), calling `progress(done,
/// total)` as each finishes. Results come back in index order; after a failure the workers
/// start nothing new and the first failure (in index order) is returned.
pub fn map_indexed<T: Send>(
    total: usize,
    threads: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
    work: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, total.max(1));
    let (next, done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0), AtomicBool::new(false));
    let mut finished: Vec<(usize, Result<T>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let result = work(i);
                        failed.fetch_or(result.is_err(), Ordering::Relaxed);
                        mine.push((i, result));
                        progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    // Indices are handed out in order, so every index below a finished one has finished too.
    finished.sort_by_key(|(i, _)| *i);
    finished.into_iter().map(|(_, result)| result).collect()
}
