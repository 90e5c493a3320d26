//! The load-test baselines: a bare hyper 1 server (same runtime, same connection builder as kla) answering every
//! request with a small JSON body. `bench/load.sh` runs it beside kla so figures are ratios measured in one run.
//!
//! With `--durable DIR` it is the second baseline: every answer waits until a 64-byte record for the request is
//! durable in a preallocated file, written by one thread with group commit (gather what is queued, one `pwrite`,
//! one `fdatasync`, wake the waiters; the thread under `SCHED_BATCH`), the same shape as kla's ledger writer without anything else kla does. The
//! gap between the two baselines is what a durable answer costs on this machine; the gap between this one and kla
//! is kla's own work.
//!
//! With `--body-bytes N` it reads each request's whole body and answers with an N-byte JSON body: the HTTP baseline
//! for messages the size of kla's evaluate request and answer (the default answer is 15 bytes and the body is not
//! read).
//!
//! Usage: `cargo run --release --example bare_hyper -- 127.0.0.1:8799 [--durable DIR] [--body-bytes N]`

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Preallocated (zero-filled and synced before serving) so that each `fdatasync` carries data only, like kla's log.
const FILE_LEN: u64 = 256 << 20;
const RECORD: usize = 64;

type Ack = oneshot::Sender<()>;

fn writer(file: std::fs::File, rx: mpsc::Receiver<Ack>) {
    // The same scheduling as kla's ledger writer, so the baseline differs from kla only in kla's work.
    if let Err(e) = kla::ledger::log::batch_scheduling() {
        eprintln!("durable baseline: default scheduling ({e})");
    }
    let mut offset = 0u64;
    let mut acks: Vec<Ack> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(first) = rx.recv() {
        acks.push(first);
        acks.extend(rx.try_iter());
        buf.clear();
        buf.resize(acks.len() * RECORD, 0xa5);
        if offset + buf.len() as u64 > FILE_LEN {
            offset = 0;
        }
        if let Err(e) = file.write_all_at(&buf, offset).and_then(|()| file.sync_data()) {
            eprintln!("durable baseline: {e}");
            std::process::exit(1);
        }
        offset += buf.len() as u64;
        for a in acks.drain(..) {
            let _ = a.send(());
        }
    }
}

fn open_durable(dir: &str) -> std::io::Result<mpsc::Sender<Ack>> {
    let path = std::path::Path::new(dir).join("bare_hyper.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..FILE_LEN / zeros.len() as u64 {
        file.write_all_at(&zeros, i * zeros.len() as u64)?;
    }
    file.sync_all()?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("bare-writer".into())
        .spawn(move || writer(file, rx))?;
    Ok(tx)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let addr = args.get(1).cloned().unwrap_or_else(|| "127.0.0.1:8799".into());
    let durable = match args.iter().position(|a| a == "--durable") {
        Some(i) => Some(open_durable(
            args.get(i + 1).ok_or("--durable needs a directory")?,
        )?),
        None => None,
    };
    let shaped: Option<usize> = match args.iter().position(|a| a == "--body-bytes") {
        Some(i) => Some(args.get(i + 1).ok_or("--body-bytes needs a number")?.parse()?),
        None => None,
    };
    // A JSON string of the asked size: {"pad":"xxx…"}.
    let answer = match shaped {
        Some(n) => Bytes::from(format!(r#"{{"pad":"{}"}}"#, "x".repeat(n.saturating_sub(10)))),
        None => Bytes::from_static(br#"{"status":"ok"}"#),
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "bare hyper on {addr} (durable: {}, answer: {} bytes)",
        durable.is_some(),
        answer.len()
    );
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let durable = durable.clone();
        let answer = answer.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let durable = durable.clone();
                let answer = answer.clone();
                async move {
                    if shaped.is_some() {
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    }
                    if let Some(tx) = durable {
                        let (ack, done) = oneshot::channel();
                        if tx.send(ack).is_ok() {
                            let _ = done.await;
                        }
                    }
                    let mut r = Response::new(Full::new(answer));
                    r.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
