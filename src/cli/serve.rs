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

/// Runs the server until SIGINT/SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let base = match &args.config {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    let cfg = args.raw.over(base).validate()?;
    crate::telemetry::init(cfg.log.json);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let running = crate::app::start(cfg).await?;
        println!("kla listening on {}", running.api_addr);
        tokio::select! {
            _ = crate::app::signal() => {
                tracing::info!("signal received");
                running.shutdown.cancel();
            }
            _ = running.shutdown.cancelled() => {}
        }
        running.done.await??;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
