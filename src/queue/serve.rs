//! `Queue::serve`: a worker process's main loop.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tower_service::Service;

use super::handle::{Queue, ShutdownReport};
use super::store::Store;
use super::worker;
use crate::BoxError;

/// Runs a service on a queue's workers until a shutdown signal; from [`Queue::serve`].
#[must_use = "the workers start when `until` is awaited"]
pub struct Serve<Req, Res, St, S> {
    queue: Queue<Req, Res, St>,
    service: S,
    drain: Duration,
}

impl<Req, Res, St> Queue<Req, Res, St> {
    /// Runs `service` on this queue's workers (as many at once as
    /// [`workers`](super::QueueBuilder::workers)) until [`until`](Serve::until)'s signal:
    /// the main loop of a worker process. Producers need no workers: they only enqueue.
    ///
    /// ```no_run
    /// use layercake::queue::Queue;
    /// use tower::service_fn;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Translate { text: String }
    ///
    /// # async fn run() -> Result<(), layercake::BoxError> {
    /// let queue = Queue::<Translate, String>::builder("translate")
    ///     .redis_url(std::env::var("REDIS_URL").ok())
    ///     .workers(8)
    ///     .build()?;
    /// let translate = service_fn(|req: Translate| async move {
    ///     Ok::<_, layercake::BoxError>(req.text.to_uppercase())
    /// });
    /// let report = queue.serve(translate).until(tokio::signal::ctrl_c()).await;
    /// eprintln!("stopped; {} job(s) went back to the queue", report.cancelled.len());
    /// # Ok(()) }
    /// ```
    pub fn serve<S>(&self, service: S) -> Serve<Req, Res, St, S> {
        Serve {
            queue: self.clone(),
            service,
            drain: Duration::from_secs(30),
        }
    }
}

impl<Req, Res, St, S> Serve<Req, Res, St, S>
where
    S: Service<Req, Response = Res> + Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    S::Future: Send + 'static,
    Req: Serialize + DeserializeOwned + Send + 'static,
    Res: Serialize + Send + 'static,
    St: Store,
{
    /// How long running jobs may take to finish once the signal came (default 30 s, under
    /// the usual 30 s between a container's SIGTERM and its SIGKILL; lower it if yours is
    /// shorter). Jobs still running then are stopped: with a store shared by other workers
    /// ([`RedisStore`](super::store::RedisStore)) they go back to the front of the queue
    /// for another worker; with the in-process store they end cancelled.
    pub fn drain_timeout(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// Starts the workers, waits for `signal` (for example `tokio::signal::ctrl_c()`, or
    /// a SIGTERM stream), then shuts the queue down ([`Queue::shutdown`]): no new job
    /// starts, running jobs get the drain timeout, and the report says what was left.
    pub async fn until<F: Future>(self, signal: F) -> ShutdownReport {
        worker::spawn(self.queue.core().clone(), self.service);
        signal.await;
        tracing::info!(queue = %self.queue.name(), "shutting down: draining running jobs");
        self.queue.shutdown(self.drain).await
    }
}

impl<Req, Res, St, S> fmt::Debug for Serve<Req, Res, St, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("queue", &self.queue)
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
}
