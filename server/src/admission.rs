//! Admission of segmentations: `workers` run at once (one session of each model apiece), at
//! most `queue` more wait, and a request past that is refused at once with
//! RESOURCE_EXHAUSTED instead of piling up memory and latency.
//!
//! A request is admitted when its header arrives, before its volume is received, so that a
//! full server refuses a 300 MB upload before it starts.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::metrics::Metrics;

/// The server's workers and its queue.
#[derive(Debug)]
pub struct Admission {
    workers: Arc<Semaphore>,
    worker_count: usize,
    queue: usize,
    /// Requests admitted and not yet finished: running or waiting.
    admitted: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub fn new(workers: NonZeroUsize, queue: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        metrics.set_capacity(workers.get(), queue);
        Arc::new(Admission {
            workers: Arc::new(Semaphore::new(workers.get())),
            worker_count: workers.get(),
            queue,
            admitted: AtomicUsize::new(0),
            metrics,
        })
    }

    /// A place for one more request, or RESOURCE_EXHAUSTED when the workers are busy and the
    /// queue is full.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, Status> {
        let capacity = self.worker_count + self.queue;
        let taken = self.admitted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| {
            (admitted < capacity).then_some(admitted + 1)
        });
        if taken.is_err() {
            return Err(Status::resource_exhausted(format!(
                "server busy: {} segmentations running and {} waiting, the queue's limit; try again later",
                self.worker_count, self.queue
            )));
        }
        self.metrics.queued_changed(1);
        Ok(Admitted { admission: Arc::clone(self), permit: None })
    }
}

/// An admitted request: waiting until [`Admitted::wait_for_worker`], then running. Dropping
/// it frees its place.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Admitted {
    /// Waits for a free worker, until `deadline` if there is one (DEADLINE_EXCEEDED then).
    pub async fn wait_for_worker(&mut self, deadline: Option<Instant>) -> Result<(), Status> {
        let acquire = Arc::clone(&self.admission.workers).acquire_owned();
        let permit = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), acquire)
                .await
                .map_err(|_| Status::deadline_exceeded("deadline exceeded while waiting for a free worker"))?,
            None => acquire.await,
        }
        .map_err(|_| Status::unavailable("the server is shutting down"))?;
        self.permit = Some(permit);
        self.admission.metrics.queued_changed(-1);
        self.admission.metrics.busy_changed(1);
        Ok(())
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        match self.permit {
            Some(_) => self.admission.metrics.busy_changed(-1),
            None => self.admission.metrics.queued_changed(-1),
        }
        self.admission.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_workers_plus_queue_requests_are_refused_and_places_come_back() {
        let admission = Admission::new(NonZeroUsize::new(1).unwrap(), 1, Arc::new(Metrics::new()));
        let mut running = admission.admit().unwrap();
        running.wait_for_worker(None).await.unwrap();
        let mut waiting = admission.admit().unwrap();
        let refused = admission.admit().unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("1 segmentations running and 1 waiting"), "{refused:?}");

        // The waiting one cannot start while the worker is busy: it times out.
        let soon = Some(Instant::now() + std::time::Duration::from_millis(50));
        assert_eq!(waiting.wait_for_worker(soon).await.unwrap_err().code(), tonic::Code::DeadlineExceeded);
        drop(running);
        waiting.wait_for_worker(None).await.unwrap();
        // One running, none waiting: one more fits.
        let _third = admission.admit().unwrap();
        assert!(admission.admit().is_err());
    }
}
