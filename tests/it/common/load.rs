//! Changing a running sidecar's config, and proving that nothing failed meanwhile: files
//! replaced in one step, requests that report their outcome as a value, and load workers that
//! keep sending until told to stop.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Replaces the file in one step (write a hidden sibling, then rename over it), so the proxy
/// never reads a half-written file.
pub fn write_config(path: &Path, contents: &str) {
    let name = path
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{name}.new"));
    std::fs::write(&tmp, contents).expect("write new config");
    std::fs::rename(&tmp, path).expect("rename new config into place");
}

/// Status and body of one request, or the error as text.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
) -> Result<(u16, String), String> {
    let mut req = client.get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let body = r.text().await.map_err(|e| format!("body: {e:?}"))?;
    Ok((status, body))
}

/// Polls (bounded by 30 s) until `url` answers `want`; returns the last answer.
pub async fn wait_for_answer(
    client: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    want: (u16, &str),
) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(client, url, cookie).await;
        if let Ok((status, body)) = &got
            && *status == want.0
            && body == want.1
        {
            return (*status, body.clone());
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered {want:?} within 30 s; last answer: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub ok: usize,
    pub failures: Vec<String>,
}

/// One load worker: keep-alive GETs on its own client until `stop` (or a
/// 120 s safety bound); every answer must be `200` with `want_body`.
pub fn spawn_load(
    client: reqwest::Client,
    url: String,
    cookie: String,
    want_body: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadResult> {
    tokio::spawn(async move {
        let mut res = LoadResult::default();
        let bound = Instant::now() + Duration::from_secs(120);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) && Instant::now() < bound {
            i += 1;
            match get(&client, &format!("{url}?n={i}"), Some(&cookie)).await {
                Ok((200, body)) if body == want_body => res.ok += 1,
                other => res.failures.push(format!("request {i}: {other:?}")),
            }
        }
        res
    })
}

/// Stops the load `workers` (bounded), asserts that none of their requests failed (`what`
/// says during what), and returns how many succeeded.
pub async fn finish_load(
    stop: &AtomicBool,
    workers: Vec<tokio::task::JoinHandle<LoadResult>>,
    what: &str,
) -> usize {
    stop.store(true, Ordering::SeqCst);
    let mut ok = 0;
    let mut failures = Vec::new();
    for w in workers {
        let r = tokio::time::timeout(Duration::from_secs(60), w)
            .await
            .expect("load worker did not stop")
            .expect("load worker panicked");
        ok += r.ok;
        failures.extend(r.failures);
    }
    assert!(
        failures.is_empty(),
        "{} of {} load requests failed {what}; first ones:\n{}",
        failures.len(),
        failures.len() + ok,
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    ok
}
