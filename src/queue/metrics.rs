//! The queue's metrics: names (public API), descriptions, and the handles a queue registers
//! once when it is built.

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

pub(crate) const JOBS_TOTAL: &str = "layercake_queue_jobs_total";
pub(crate) const DEPTH: &str = "layercake_queue_depth";
pub(crate) const WAIT_SECONDS: &str = "layercake_queue_wait_seconds";
pub(crate) const RUN_SECONDS: &str = "layercake_queue_run_seconds";
pub(crate) const STORE_ERRORS: &str = "layercake_queue_store_errors_total";

/// Describes the queue's metrics to the installed recorder.
pub(crate) fn describe() {
    describe_counter!(
        JOBS_TOTAL,
        Unit::Count,
        "Job events by queue: enqueued, deduplicated (an enqueue that found the job already \
         queued or running), completed, failed, quarantined (failed because its payload could \
         not be decoded), retried, cancelled, recovered (requeued after its worker's lease expired)."
    );
    describe_gauge!(
        DEPTH,
        Unit::Count,
        "Queued jobs: those this process enqueued or requeued for a retry, minus those it \
         started or cancelled. With one process it is the queue's depth; with processes \
         sharing a store, the sum over them is."
    );
    describe_histogram!(
        WAIT_SECONDS,
        Unit::Seconds,
        "Time from enqueue to the start of a job's first attempt."
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Failed store operations by queue and operation: enqueue (the caller got the error), \
         take, settle, renew (or progress) and recover (the worker logged it and carried on). \
         With the Redis store: Redis unreachable, too slow for the command budget, or failing."
    );
    describe_histogram!(
        RUN_SECONDS,
        Unit::Seconds,
        "Time an attempt ran, whatever its outcome."
    );
}

/// The handles of one queue, registered when it is built (not per job).
pub(crate) struct QueueMetrics {
    pub(crate) enqueued: Counter,
    pub(crate) deduplicated: Counter,
    pub(crate) completed: Counter,
    pub(crate) failed: Counter,
    pub(crate) quarantined: Counter,
    pub(crate) retried: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) recovered: Counter,
    pub(crate) store_errors: StoreErrors,
    pub(crate) depth: Gauge,
    pub(crate) wait: Histogram,
    pub(crate) run: Histogram,
}

impl QueueMetrics {
    pub(crate) fn new(queue: &str) -> Self {
        let event = |event: &'static str| counter!(JOBS_TOTAL, "queue" => queue.to_owned(), "event" => event);
        Self {
            enqueued: event("enqueued"),
            deduplicated: event("deduplicated"),
            completed: event("completed"),
            failed: event("failed"),
            quarantined: event("quarantined"),
            retried: event("retried"),
            cancelled: event("cancelled"),
            recovered: event("recovered"),
            store_errors: StoreErrors::new(queue),
            depth: gauge!(DEPTH, "queue" => queue.to_owned()),
            wait: histogram!(WAIT_SECONDS, "queue" => queue.to_owned()),
            run: histogram!(RUN_SECONDS, "queue" => queue.to_owned()),
        }
    }
}

/// `layercake_queue_store_errors_total`, one handle per operation.
pub(crate) struct StoreErrors {
    pub(crate) enqueue: Counter,
    pub(crate) take: Counter,
    pub(crate) settle: Counter,
    pub(crate) renew: Counter,
    pub(crate) recover: Counter,
}

impl StoreErrors {
    fn new(queue: &str) -> Self {
        let op = |op: &'static str| counter!(STORE_ERRORS, "queue" => queue.to_owned(), "op" => op);
        Self {
            enqueue: op("enqueue"),
            take: op("take"),
            settle: op("settle"),
            renew: op("renew"),
            recover: op("recover"),
        }
    }
}

impl std::fmt::Debug for QueueMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueMetrics").finish_non_exhaustive()
    }
}
