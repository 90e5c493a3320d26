//! `/v1/agents`: the agent registry (seed 001 "Register an Agent").

use super::auth::Caller;
use super::json::ApiJson;
use super::{ApiError, ApiResult, SharedState};
use crate::auth::Role;
use crate::registry::{self, Manifest};
use crate::store::{AgentRecord, AgentVersionRecord, NewAgentVersion, RegisterOutcome};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
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
}

async fn register(
    State(s): State<SharedState>,
    caller: Caller,
    ApiJson(manifest): ApiJson<Manifest>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    caller.require(&[Role::Admin, Role::Agent])?;
    manifest
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let canonical = manifest
        .canonical()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let manifest_hash = registry::manifest_hash(&canonical);
    let signature = registry::sign_hash(&s.registry_key.signing, &manifest_hash);
    let registered_at = crate::time::now_rfc3339();
    let outcome = s
        .store
        .register_agent(NewAgentVersion {
            tenant: caller.tenant.to_string(),
            candidate_id: registry::new_agent_id(),
            name: manifest.name.clone(),
            manifest: canonical,
            manifest_hash: manifest_hash.clone(),
            signature: signature.clone(),
            key_id: s.registry_key.key_id(),
            registered_at: registered_at.clone(),
        })
        .await
        .map_err(ApiError::unavailable)?;
    match outcome {
        RegisterOutcome::Duplicate { agent_id, version } => Err(ApiError::conflict(format!(
            "agent '{}' is already registered with this manifest ({agent_id} version {version})",
            manifest.name
        ))),
        RegisterOutcome::Created { agent_id, version } => {
            tracing::info!(tenant = %caller.tenant, agent_id, version, "agent registered");
            Ok((
                StatusCode::CREATED,
                Json(Registered {
                    agent_id,
                    manifest_hash,
                    registered_at,
                    version,
                    signature,
                    signature_key_id: s.registry_key.key_id(),
                }),
            ))
        }
    }
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

async fn list(State(s): State<SharedState>, caller: Caller) -> ApiResult<Json<Value>> {
    let agents = s
        .store
        .list_agents(&caller.tenant)
        .await
        .map_err(ApiError::unavailable)?;
    let views = agents
        .iter()
        .map(|a| agent_view(a, false))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(serde_json::json!({ "agents": views })))
}

async fn get_one(
    State(s): State<SharedState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<AgentView>> {
    let agent = s
        .store
        .get_agent(&caller.tenant, &agent_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("unknown agentId '{agent_id}'")))?;
    Ok(Json(agent_view(&agent, true)?))
}
