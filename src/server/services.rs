//! Supervised background services: named tasks that are told to stop, stopped in reverse start order within a
//! bound, and whose failure or panic is logged with their name; then the final steps of shutdown, in order.

use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Step = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// The background services of a running server and the steps that end it.
///
/// Dropping it without [`Services::shutdown`] (a start that failed half way) tells every service to stop.
pub struct Services {
    root: CancellationToken,
    running: Vec<Running>,
    finals: Vec<(&'static str, Step)>,
}

struct Running {
    name: &'static str,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Default for Services {
    fn default() -> Self {
        Self::new()
    }
}

impl Services {
    /// No services yet.
    pub fn new() -> Self {
        Services {
            root: CancellationToken::new(),
            running: Vec::new(),
            finals: Vec::new(),
        }
    }

    /// Spawns the service `name`. `run` gets a token that is cancelled when the service is to stop; it should then
    /// return soon. An error it returns, or a panic, is logged with `name`; the other services keep running.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, run: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = self.root.child_token();
        let fut = run(stop.clone());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(Ok(())) if stopped.is_cancelled() => tracing::debug!(service = name, "service stopped"),
                Ok(Ok(())) => tracing::warn!(service = name, "service ended before shutdown"),
                Ok(Err(e)) => tracing::error!(service = name, error = format!("{e:#}"), "service failed"),
                Err(panic) => {
                    tracing::error!(service = name, panic = panic_message(&*panic), "service panicked")
                }
            }
        });
        tracing::debug!(service = name, "service started");
        self.running.push(Running { name, stop, task });
    }

    /// Adds a step that [`Services::shutdown`] runs after every service has stopped, in the order added. A failure
    /// is logged with `name` and does not skip the steps after it.
    pub fn on_shutdown<Fut>(&mut self, name: &'static str, step: Fut)
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.finals.push((name, Box::pin(step)));
    }

    /// Names of the running services, in start order.
    pub fn names(&self) -> Vec<&'static str> {
        self.running.iter().map(|r| r.name).collect()
    }

    /// Stops the services in reverse start order (a later service may use an earlier one), giving each `bound` to
    /// end before it is aborted, then runs the final steps, each within `bound`.
    pub async fn shutdown(mut self, bound: Duration) {
        for Running { name, stop, mut task } in std::mem::take(&mut self.running).into_iter().rev() {
            stop.cancel();
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                tracing::warn!(
                    service = name,
                    bound_ms = bound.as_millis() as u64,
                    "service did not stop in time; aborted"
                );
                task.abort();
            }
        }
        for (name, step) in std::mem::take(&mut self.finals) {
            match tokio::time::timeout(bound, AssertUnwindSafe(step).catch_unwind()).await {
                Ok(Ok(Ok(()))) => tracing::debug!(step = name, "shutdown step done"),
                Ok(Ok(Err(e))) => {
                    tracing::warn!(step = name, error = format!("{e:#}"), "shutdown step failed")
                }
                Ok(Err(panic)) => tracing::error!(
                    step = name,
                    panic = panic_message(&*panic),
                    "shutdown step panicked"
                ),
                Err(_) => tracing::warn!(
                    step = name,
                    bound_ms = bound.as_millis() as u64,
                    "shutdown step timed out"
                ),
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.root.cancel();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn log() -> Arc<Mutex<Vec<String>>> {
        Arc::new(Mutex::new(Vec::new()))
    }

    #[tokio::test]
    async fn services_stop_in_reverse_order_then_final_steps_run_in_order() {
        let order = log();
        let mut s = Services::new();
        for name in ["first", "second", "third"] {
            let order = order.clone();
            s.spawn(name, move |stop| async move {
                stop.cancelled().await;
                order.lock().unwrap().push(format!("stop {name}"));
                Ok(())
            });
        }
        for name in ["flush", "checkpoint"] {
            let order = order.clone();
            s.on_shutdown(name, async move {
                order.lock().unwrap().push(name.to_owned());
                Ok(())
            });
        }
        assert_eq!(s.names(), ["first", "second", "third"]);
        s.shutdown(Duration::from_secs(5)).await;
        assert_eq!(
            *order.lock().unwrap(),
            ["stop third", "stop second", "stop first", "flush", "checkpoint"]
        );
    }

    #[tokio::test]
    async fn a_failing_or_panicking_service_leaves_the_others_and_shutdown_running() {
        let order = log();
        let mut s = Services::new();
        s.spawn("fails", |_| async { anyhow::bail!("broken") });
        s.spawn("panics", |_| async { panic!("boom") });
        let o = order.clone();
        s.spawn("healthy", move |stop| async move {
            stop.cancelled().await;
            o.lock().unwrap().push("healthy stopped".to_owned());
            Ok(())
        });
        s.on_shutdown("step fails", async { anyhow::bail!("no") });
        let o = order.clone();
        s.on_shutdown("step after", async move {
            o.lock().unwrap().push("step after".to_owned());
            Ok(())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.shutdown(Duration::from_secs(5)).await;
        assert_eq!(*order.lock().unwrap(), ["healthy stopped", "step after"]);
    }

    #[tokio::test]
    async fn a_service_that_ignores_stop_is_aborted_after_the_bound() {
        let mut s = Services::new();
        s.spawn("stubborn", |_| std::future::pending());
        let t = std::time::Instant::now();
        s.shutdown(Duration::from_millis(50)).await;
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn dropping_services_tells_them_to_stop() {
        let mut s = Services::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        s.spawn("watcher", move |stop| async move {
            stop.cancelled().await;
            let _ = tx.send(());
            Ok(())
        });
        drop(s);
        tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .expect("stopped")
            .expect("sent");
    }
}
