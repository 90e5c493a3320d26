//! `/v1/agents`: the agent registry (the KLA Control Plane API's "Register an Agent").

use super::auth::Caller;
use super::{ApiError, ApiResult, SharedState, page};
use crate::auth::Role;
use crate::registry::{Manifest, RegistryError};
use crate::server::json::{ApiPath, ApiQuery, RawJson};
use crate::store::{AgentRecord, AgentVersionRecord};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/agents", get(list).post(register))
        .route("/agents/{agent_id}", get(get_one))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Registered {
    agent_id: String,
    manifest_hash: String,
    registered_at: String,
    version: i64,
    signature: String,
    signature_key_id: String,
    lineage_id: String,
}

async fn register(
    State(s): State<SharedState>,
    caller: Caller,
    body: RawJson,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    caller.require(&[Role::Admin, Role::Agent])?;
    let manifest: Manifest = body.parse()?;
    let r = s.agents.register(&caller, manifest).await?;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            agent_id: r.agent_id,
            manifest_hash: r.manifest_hash,
            registered_at: r.registered_at,
            version: r.version,
            signature: r.signature,
            signature_key_id: r.signature_key_id,
            lineage_id: r.lineage_id,
        }),
    ))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionView {
    version: i64,
    manifest_hash: String,
    manifest: Value,
    signature: String,
    signature_key_id: String,
    registered_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lineage_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentView {
    agent_id: String,
    name: String,
    created_at: String,
    version: i64,
    manifest_hash: String,
    registered_at: String,
    manifest: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    versions: Option<Vec<VersionView>>,
}

fn version_view(v: &AgentVersionRecord) -> ApiResult<VersionView> {
    Ok(VersionView {
        version: v.version,
        manifest_hash: v.manifest_hash.clone(),
        manifest: serde_json::from_str(&v.manifest).map_err(ApiError::internal)?,
        signature: v.signature.clone(),
        signature_key_id: v.key_id.clone(),
        registered_at: v.registered_at.clone(),
        lineage_id: v.lineage_id.clone(),
    })
}

fn agent_view(a: &AgentRecord, with_versions: bool) -> ApiResult<AgentView> {
    let latest = a
        .latest()
        .ok_or_else(|| ApiError::internal("agent without versions"))?;
    Ok(AgentView {
        agent_id: a.agent_id.clone(),
        name: a.name.clone(),
        created_at: a.created_at.clone(),
        version: latest.version,
        manifest_hash: latest.manifest_hash.clone(),
        registered_at: latest.registered_at.clone(),
        manifest: serde_json::from_str(&latest.manifest).map_err(ApiError::internal)?,
        versions: if with_versions {
            Some(a.versions.iter().map(version_view).collect::<ApiResult<_>>()?)
        } else {
            None
        },
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u64>,
    cursor: Option<String>,
}

/// Scope of agent-list cursors (a cursor names the last agent name of its page).
const AGENTS_CURSOR: &str = "agents";

/// The tenant's agents by name, one page at a time (at most `limit`, and [`page::PAGE_BYTES`] of manifests);
/// `nextCursor` names the next page, `null` on the last. A token bound to one agent lists only that agent.
async fn list(
    State(s): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = page::limit(q.limit)?;
    let after = page::after(AGENTS_CURSOR, q.cursor.as_deref())?;
    let agent = caller.principal.agent.as_deref();
    // One more than the page, to know whether another page follows.
    let mut agents = s
        .recorder
        .agents_page(&caller.tenant, agent, after.as_deref(), limit + 1)
        .await?;
    let mut more = agents.len() > limit;
    agents.truncate(limit);
    let fits = page::fit(agents.iter().map(|a| a.latest().map_or(0, |v| v.manifest.len())));
    more |= fits < agents.len();
    agents.truncate(fits);
    let views = agents
        .iter()
        .map(|a| agent_view(a, false))
        .collect::<ApiResult<Vec<_>>>()?;
    let next = match agents.last() {
        Some(a) if more => Some(page::cursor(AGENTS_CURSOR, &a.name)),
        _ => None,
    };
    Ok(Json(serde_json::json!({ "agents": views, "nextCursor": next })))
}

async fn get_one(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(agent_id): ApiPath<String>,
) -> ApiResult<Json<AgentView>> {
    let agent = s.agents.record(&caller.tenant, &agent_id).await?;
    // Another agent, for a token bound to one agent, is the same 404 as an unknown id.
    if !caller.may_read(&caller.tenant, Some((&agent.agent_id, &agent.name))) {
        return Err(RegistryError::UnknownAgent(agent_id).into());
    }
    Ok(Json(agent_view(&agent, true)?))
}
