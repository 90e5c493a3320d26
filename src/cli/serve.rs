//! `kla serve`: embedded defaults, an optional `--config kla.yaml`, flags over both.

use crate::config::RawConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `kla serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// YAML file with one section per component (`api`, `auth`, `ledger`, `policy`, `log`; see docs/config.md).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Settings; each overrides the same key in --config.
    #[command(flatten)]
    pub raw: RawConfig,
}

/// The config from the file (if any) with the flags over it.
fn load(args: &ServeArgs) -> anyhow::Result<crate::config::Config> {
    let base = match &args.config {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    Ok(args.raw.clone().over(base).validate()?)
}

/// Runs the server until SIGINT/SIGTERM; SIGHUP reloads the config file (the proxy's routes).
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = load(&args)?;
    crate::telemetry::init(cfg.log.json);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let running = crate::app::start(cfg).await?;
        println!("kla listening on {}", running.api_addr);
        let mut hangups = crate::app::Hangups::new();
        let stop = crate::app::signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => {
                    tracing::info!("signal received");
                    running.shutdown.cancel();
                    break;
                }
                _ = running.shutdown.cancelled() => break,
                () = hangups.next() => {
                    match load(&args).and_then(|cfg| running.reload(&cfg)) {
                        Ok(what) => tracing::info!(%what, "config reloaded on SIGHUP"),
                        Err(e) => tracing::warn!(error = %e, "config reload refused; the running config stays"),
                    }
                }
            }
        }
        running.done.await??;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
