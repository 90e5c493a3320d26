//! `kla token`: mints an API token with the data dir's signing key (created if absent), or with `--desk` a one-time
//! sign-in link to the Decision Desk.

use crate::auth::{self, Role, keys};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `kla token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// Data directory of the server that will accept the token.
    #[arg(long, default_value = "kla-data")]
    pub data_dir: PathBuf,
    /// Tenant the token may act in (repeatable; exactly one with --desk).
    #[arg(long, required_unless_present = "operator")]
    pub tenant: Vec<String>,
    /// Role (with --desk: approver, the default, or admin).
    #[arg(long, value_enum, required_unless_present_any = ["operator", "desk"])]
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
    /// Print a one-time sign-in link to the Decision Desk instead: `<url>/desk#code=<code>`. The code is valid for
    /// one sign-in within its lifetime (default 10m, at most 1h); the browser exchanges it for an 8-hour session
    /// cookie.
    #[arg(long, conflicts_with_all = ["operator", "agent"])]
    pub desk: bool,
    /// With --desk: the address people open kla at (default `http://127.0.0.1:8700`).
    #[arg(long, requires = "desk")]
    pub url: Option<String>,
    /// Lifetime, e.g. `1h`, `30m`, `7d` (default 1h; with --desk 10m).
    #[arg(long)]
    pub ttl: Option<humantime::Duration>,
}

/// Lifetime of a token when `--ttl` is not given.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Lifetime of a Desk sign-in link when `--ttl` is not given.
const DESK_LINK_TTL: Duration = Duration::from_secs(600);
/// Where `--desk` links point when `--url` is not given: kla's default API address.
const DEFAULT_DESK_URL: &str = "http://127.0.0.1:8700";
/// The longest a Desk sign-in link may live: it travels in chats and mail, where it may be read later.
const DESK_LINK_MAX_TTL: Duration = Duration::from_secs(3600);

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
    if a.desk {
        println!("{}", desk_link(&a, key.private_pem.as_bytes())?);
        return Ok(ExitCode::SUCCESS);
    }
    let ttl = a.ttl.map_or(DEFAULT_TTL, Into::into);
    let token = match a.role {
        _ if a.operator => auth::mint_operator(
            key.private_pem.as_bytes(),
            a.subject.unwrap_or_else(|| Role::Operator.as_str().to_owned()),
            ttl,
        )?,
        Some(role) => auth::mint(
            key.private_pem.as_bytes(),
            a.tenant,
            role,
            a.subject.unwrap_or_else(|| role.as_str().to_owned()),
            a.agent,
            ttl,
        )?,
        None => anyhow::bail!("give --role (with --tenant), or --operator"),
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// The sign-in link of `--desk`. The code travels in the URL's fragment, which browsers never send to a server
/// (so no proxy or access log sees it); the page reads it and exchanges it at `POST /desk/session`.
fn desk_link(a: &TokenArgs, private_pem: &[u8]) -> anyhow::Result<String> {
    let [tenant] = a.tenant.as_slice() else {
        anyhow::bail!("a Decision Desk sign-in link is for exactly one tenant (give --tenant once)");
    };
    let role = a.role.unwrap_or(Role::Approver);
    if !auth::DESK_ROLES.contains(&role) {
        anyhow::bail!(
            "a Decision Desk sign-in link is for the roles approver and admin, not {}",
            role.as_str()
        );
    }
    let ttl: Duration = a.ttl.map_or(DESK_LINK_TTL, Into::into);
    if ttl.is_zero() || ttl > DESK_LINK_MAX_TTL {
        anyhow::bail!("a Decision Desk sign-in link lives at most 1h (--ttl)");
    }
    let url = a.url.as_deref().unwrap_or(DEFAULT_DESK_URL).trim_end_matches('/');
    let well_formed = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .is_some_and(|r| !r.is_empty() && !r.contains(['#', '?']) && !r.chars().any(char::is_whitespace));
    if !well_formed {
        anyhow::bail!("--url must be an http:// or https:// address without query or fragment, got {url:?}");
    }
    let subject = a.subject.clone().unwrap_or_else(|| role.as_str().to_owned());
    let code = auth::mint_desk_link(private_pem, tenant.clone(), role, subject, ttl)?;
    Ok(format!("{url}/desk#code={code}"))
}
