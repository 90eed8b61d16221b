//! `QueueLayer`: puts a queue in front of a service.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tower_layer::Layer;
use tower_service::Service;

use super::handle::Queue;
use super::service::QueueService;
use super::store::{MemoryStore, Store};
use super::worker;
use crate::BoxError;

/// Puts a [`Queue`] in front of a service: the service runs on the queue's workers, and
/// the layered service ([`QueueService`]) enqueues requests and answers with job ids.
///
/// Each service the layer wraps gets its own dispatcher task, spawned on the queue's runtime
/// when [`layer`](Layer::layer) is called; all of them share the queue's jobs and its
/// `workers` limit. Wrap a service once per queue unless you mean to add equivalent
/// handlers. Layering a queue that was shut down gives a service that only fails with
/// [`QueueError::is_closed`](super::QueueError::is_closed).
///
/// The wrapped service's `poll_ready` is honoured before each job is taken, and it need not
/// be `Clone`. Its response must be `Serialize` (it is stored encoded) and its error must
/// convert into [`BoxError`]; wrap an error in [`Permanent`](super::Permanent) to fail the
/// job without retries.
pub struct QueueLayer<Req, Res, St = MemoryStore> {
    queue: Queue<Req, Res, St>,
}

impl<Req, Res, St> QueueLayer<Req, Res, St> {
    /// A layer that runs wrapped services on `queue`'s workers.
    pub fn new(queue: Queue<Req, Res, St>) -> Self {
        Self { queue }
    }
}

impl<Req, Res, St> Clone for QueueLayer<Req, Res, St> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<S, Req, Res, St> Layer<S> for QueueLayer<Req, Res, St>
where
    S: Service<Req, Response = Res> + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
    Req: Serialize + DeserializeOwned + Send + 'static,
    Res: Serialize + Send + 'static,
    St: Store,
{
    type Service = QueueService<Req, Res, St>;

    fn layer(&self, inner: S) -> Self::Service {
        worker::spawn(self.queue.core().clone(), inner);
        QueueService::new(self.queue.clone())
    }
}

impl<Req, Res, St> fmt::Debug for QueueLayer<Req, Res, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLayer")
            .field("queue", &self.queue)
            .finish()
    }
}
