//! The jobs example (`examples/jobs.rs`) over real HTTP on loopback: the whole life of a
//! job, cancellation, failures and listing, and the status cache kept fresh by the queue's
//! change hook.

#[allow(dead_code)] // the example's `main` is not used here
#[path = "../examples/jobs.rs"]
mod example;

use std::future::Future;
use std::time::Duration;

use example::{Settings, Translation};
use layercake::Cache;
use serde_json::{json, Value};

/// The app on a free loopback port. The status cache keeps entries for a minute, far longer
/// than any wait below: a test sees a job change only if the change hook invalidated it.
struct App {
    base: String,
    client: reqwest::Client,
    cache: Cache<Option<example::Job>>,
}

async fn start(per_word: Duration) -> App {
    let jobs = example::jobs(Settings {
        per_word,
        status_ttl: Duration::from_secs(60),
    })
    .unwrap();
    let cache = jobs.cache.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, example::app(jobs)).await });
    App {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        cache,
    }
}

impl App {
    async fn submit(&self, body: Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}/translate", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/jobs/{id}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn delete(&self, id: &str) -> (u16, String) {
        let res = self
            .client
            .delete(format!("{}/jobs/{id}", self.base))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    /// Polls `GET /jobs/{id}` until `done` holds, for at most 10 s.
    async fn poll_until(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        eventually(what, || async {
            let job = self.job(id).await;
            done(&job).then_some(job)
        })
        .await
    }
}

async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_from_submit_to_result() {
    let app = start(Duration::from_millis(50)).await;

    let (status, body) = app
        .submit(json!({"file_id": 1, "text": "hola mundo gato perro"}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(body, json!({"id": "file-1"}));

    // The same file while its job is live: the same job, not a copy.
    let (status, body) = app
        .submit(json!({"file_id": 1, "text": "hola mundo gato perro"}))
        .await;
    assert_eq!((status, body), (202, json!({"id": "file-1"})));

    let running = app
        .poll_until("file-1", "progress while running", |job| {
            job["status"] == "running" && job["progress"]["value"].as_f64() > Some(0.0)
        })
        .await;
    assert_eq!(running["attempts"], 1);
    assert!(running["started_at"].is_u64());
    assert!(running["result"].is_null());

    let done = app
        .poll_until("file-1", "the result", |job| job["status"] == "completed")
        .await;
    let result: Translation = serde_json::from_value(done["result"].clone()).unwrap();
    assert_eq!(
        result,
        Translation {
            file_id: 1,
            text: "hello world cat dog".into()
        }
    );
    assert_eq!(done["progress"]["value"], 1.0);
    assert_eq!(done["progress"]["message"], "word 4 of 4");
    assert!(done["finished_at"].as_u64() >= done["started_at"].as_u64());
    assert!(done["error"].is_null());

    // Polls of an unchanged job come from the cache (once the hook's second, delayed
    // invalidation has passed).
    let hits = app.cache.stats().hits_l1;
    eventually("a cache hit", || async {
        app.job("file-1").await;
        (app.cache.stats().hits_l1 > hits).then_some(())
    })
    .await;

    // A finished file can be translated again: a new run under the same id.
    let (status, _) = app.submit(json!({"file_id": 1, "text": "hola"})).await;
    assert_eq!(status, 202);
    let again = app
        .poll_until("file-1", "the second result", |job| {
            job["status"] == "completed" && job["result"]["text"] == "hello"
        })
        .await;
    assert_eq!(again["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_is_cancelled() {
    // Each word takes 10 s: the job is running whenever it is cancelled.
    let app = start(Duration::from_secs(10)).await;
    let (status, _) = app
        .submit(json!({"file_id": 2, "text": "uno dos tres"}))
        .await;
    assert_eq!(status, 202);
    app.poll_until("file-2", "the job to run", |job| job["status"] == "running")
        .await;

    let (status, body) = app.delete("file-2").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"id": "file-2", "outcome": "stopping"}));

    let job = app
        .poll_until("file-2", "the cancellation", |job| {
            job["status"] == "cancelled"
        })
        .await;
    assert!(job["result"].is_null());
    assert!(job["finished_at"].is_u64());

    let (status, body) = app.delete("file-2").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        json!({"id": "file-2", "outcome": "already_finished", "status": "cancelled"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_listed_and_unknown_ids_are_404() {
    let app = start(Duration::from_millis(1)).await;
    let (status, _) = app.submit(json!({"file_id": 3, "text": "   "})).await;
    assert_eq!(status, 202);
    let (status, _) = app.submit(json!({"file_id": 4, "text": "hola"})).await;
    assert_eq!(status, 202);

    let failed = app
        .poll_until("file-3", "the failure", |job| job["status"] == "failed")
        .await;
    assert_eq!(failed["error"], "nothing to translate");
    assert_eq!(failed["attempts"], 1, "a permanent error is not retried");
    app.poll_until("file-4", "the other job", |job| {
        job["status"] == "completed"
    })
    .await;

    let (status, body) = app.get("/jobs?status=failed").await;
    assert_eq!(status, 200);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = list.iter().map(|job| job["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["file-3"]);
    let (_, body) = app.get("/jobs?status=completed&limit=10").await;
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], "file-4");

    assert_eq!(app.get("/jobs/no-such-job").await.0, 404);
    assert_eq!(app.delete("no-such-job").await.0, 404);
    assert_eq!(app.get("/jobs?status=lost").await.0, 400);

    // A job created after a 404 shows up at once: unknown ids are not cached.
    assert_eq!(app.get("/jobs/file-5").await.0, 404);
    app.submit(json!({"file_id": 5, "text": "hola"})).await;
    assert_eq!(app.get("/jobs/file-5").await.0, 200);
}
