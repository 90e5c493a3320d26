//! `kla token`: mints an API token with the data dir's signing key (created if absent).

use crate::auth::{self, Role, keys};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `kla token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Data directory of the server that will accept the token.
    #[arg(long, default_value = "kla-data")]
    pub data_dir: PathBuf,
    /// Tenant the token may act in (repeatable).
    #[arg(long, required_unless_present = "operator")]
    pub tenant: Vec<String>,
    /// Role.
    #[arg(long, value_enum, required_unless_present = "operator")]
    pub role: Option<Role>,
    /// Subject (who); defaults to the role name.
    #[arg(long)]
    pub subject: Option<String>,
    /// Bind the token to one agent (its name or id): it may then register and ask decisions only as that agent,
    /// and read only that agent's records.
    #[arg(long)]
    pub agent: Option<String>,
    /// Mint an operator token instead: it belongs to no tenant (send `x-tenant-id: _operator`) and may read only
    /// the ledger's monitor routes (entries in full, checkpoint, key, consistency).
    #[arg(long, conflicts_with_all = ["tenant", "role", "agent"])]
    pub operator: bool,
    /// Lifetime, e.g. `1h`, `30m`, `7d`.
    #[arg(long, default_value = "1h")]
    pub ttl: humantime::Duration,
}

/// Prints the token on stdout.
pub fn run(a: TokenArgs) -> anyhow::Result<ExitCode> {
    if let Some(t) = a
        .tenant
        .iter()
        .find(|t| !auth::tenant_name_ok(t) || t.starts_with('_'))
    {
        anyhow::bail!(
            "tenant {t:?} is not allowed (a tenant is 1-128 visible ASCII characters; names starting with '_' are \
             reserved for kla's own entries)"
        );
    }
    std::fs::create_dir_all(&a.data_dir)?;
    let key = keys::load_or_create(&keys::token_key_path(&a.data_dir))?;
    let token = match a.role {
        _ if a.operator => auth::mint_operator(
            key.private_pem.as_bytes(),
            a.subject.unwrap_or_else(|| Role::Operator.as_str().to_owned()),
            a.ttl.into(),
        )?,
        Some(role) => auth::mint(
            key.private_pem.as_bytes(),
            a.tenant,
            role,
            a.subject.unwrap_or_else(|| role.as_str().to_owned()),
            a.agent,
            a.ttl.into(),
        )?,
        None => anyhow::bail!("give --role (with --tenant), or --operator"),
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
