//! A web process enqueues, separate worker processes run the jobs: the queue on Redis.
//!
//! ```text
//! # terminal 1 and 2: workers (stop one with Ctrl-C or SIGTERM: it drains, then exits)
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example worker
//! # terminal 3: a producer, which enqueues and waits for the results
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --example worker -- enqueue hola bonjour
//! ```
//!
//! Without `REDIS_URL` the same code runs on the in-process store: `cargo run --example
//! worker` then enqueues a few jobs, runs them in this process and exits.

use std::time::Duration;

use layercake::queue::store::AnyStore;
use layercake::queue::{JobContext, JobStatus, Progress, Queue};
use layercake::BoxError;
use serde::{Deserialize, Serialize};
use tower::service_fn;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Translate {
    file_id: u64,
    text: String,
}

fn queue() -> Result<Queue<Translate, String, AnyStore>, layercake::ConfigError> {
    Queue::builder("translate")
        // None: the in-process store. Building never fails because Redis is down.
        .redis_url(std::env::var("REDIS_URL").ok())
        .workers(4)
        .max_attempts(3)
        .result_ttl(Duration::from_secs(86_400))
        // The same file is translated once, however often it is asked for meanwhile.
        .job_id(|req: &Translate| Some(format!("file-{}", req.file_id)))
        .build()
}

/// The long work. It reports progress, and checks for cancellation between steps.
async fn translate(req: Translate) -> Result<String, BoxError> {
    let ctx = JobContext::current().expect("runs inside a job");
    for step in 1..=4 {
        if ctx.is_cancelled() {
            return Err("cancelled".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ctx.set_progress(Progress::new(f64::from(step) / 4.0).with_message("translating"));
    }
    // `generation` goes up each time the job is taken again (after a worker died): a
    // downstream store can reject a write from an older attempt with it.
    Ok(format!(
        "{} (generation {})",
        req.text.to_uppercase(),
        ctx.generation()
    ))
}

async fn enqueue_and_wait(
    queue: &Queue<Translate, String, AnyStore>,
    texts: &[String],
) -> Result<(), BoxError> {
    let mut ids = Vec::new();
    for (file_id, text) in (1..).zip(texts) {
        let req = Translate {
            file_id,
            text: text.clone(),
        };
        ids.push(queue.enqueue(req).await?);
    }
    for id in &ids {
        let job = tokio::time::timeout(Duration::from_secs(60), queue.wait(id))
            .await
            .map_err(|_| format!("job {id} did not finish within 60 s: is a worker running?"))??
            .ok_or("the job expired")?;
        match job.status {
            JobStatus::Completed => println!("{id}: {}", job.result.unwrap_or_default()),
            status => println!("{id}: {status:?} {}", job.error.unwrap_or_default()),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,layercake=info".to_owned()),
        )
        .init();
    let queue = queue()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let on_redis = queue.store().as_redis().is_some();

    if args.first().map(String::as_str) == Some("enqueue") {
        // A producer: no workers here.
        return enqueue_and_wait(&queue, &args[1..]).await;
    }
    if !on_redis {
        // No Redis: a producer and a worker in one process, then exit.
        println!("REDIS_URL is not set: running on the in-process store");
        let stop = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(queue.serve(service_fn(translate)).until(async move {
            let _ = stop.1.await;
        }));
        enqueue_and_wait(&queue, &["hola".into(), "bonjour".into()]).await?;
        drop(stop.0);
        worker.await?;
        return Ok(());
    }

    // A worker process: run jobs until Ctrl-C or SIGTERM, then drain.
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    println!("worker {} waiting for jobs", std::process::id());
    let report = queue
        .serve(service_fn(translate))
        .drain_timeout(Duration::from_secs(20))
        .until(shutdown)
        .await;
    println!(
        "stopped: {} job(s) finished while draining, {} given back to the queue",
        report.finished,
        report.cancelled.len()
    );
    Ok(())
}
