//! A minimal upstream for proxy routes (axum over loopback): answers every request `200 ok` and hands each request's
//! method, path and headers to the test, so a test waits on what reached it (or proves, after a refusal, that
//! nothing did).

use axum::extract::Request;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::sync::mpsc;

/// One request as the upstream received it.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Every header line, lowercase names; repeated names joined with `, `.
    pub headers: BTreeMap<String, String>,
}

/// The running upstream; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let (tx, seen) = mpsc::unbounded_channel();
        let app = axum::Router::new().fallback(move |req: Request| {
            let tx = tx.clone();
            async move {
                let mut headers = BTreeMap::<String, String>::new();
                for (k, v) in req.headers() {
                    let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    headers
                        .entry(k.as_str().to_owned())
                        .and_modify(|e| {
                            e.push_str(", ");
                            e.push_str(&v);
                        })
                        .or_insert(v);
                }
                let _ = tx.send(Seen {
                    method: req.method().to_string(),
                    path: req.uri().path().to_owned(),
                    headers,
                });
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream { addr, seen, task }
    }

    /// Every request received so far.
    pub fn drain(&mut self) -> Vec<Seen> {
        let mut out = Vec::new();
        while let Ok(s) = self.seen.try_recv() {
            out.push(s);
        }
        out
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A call through kla's proxy, read whole: status, headers and the body (JSON, or the text as a string). Not
/// [`crate::harness::send`]: the proxy's answers are the upstream's or its refusals, not API answers.
pub async fn through(rb: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = rb.send().await.expect("request sent");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, headers, body)
}
