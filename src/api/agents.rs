//! `/v1/agents`: the agent registry (seed 001 "Register an Agent").

use super::auth::Caller;
use super::json::{ApiPath, RawJson};
use super::{ApiError, ApiResult, SharedState};
use crate::auth::Role;
use crate::policy::AgentRef;
use crate::registry::{self, Manifest};
use crate::store::{AgentRecord, AgentVersionRecord, NewAgentVersion, RegisterOutcome};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn registration_entry(
    agent_id: &str,
    version: i64,
    manifest: &impl Serialize,
    manifest_hash: &str,
    signature: &str,
    key_id: &str,
) -> Value {
    serde_json::json!({
        "agentId": agent_id,
        "version": version,
        "manifest": manifest,
        "manifestHash": manifest_hash,
        "signature": signature,
        "signatureKeyId": key_id,
    })
}

/// Records in the ledger every registered version that is not there yet (a crash between the store write and
/// the ledger append). Runs at startup.
pub async fn reconcile_registrations(s: &SharedState) -> anyhow::Result<()> {
    for (tenant, agent_id, v) in s.store.agent_versions_without_lineage().await? {
        let manifest: Value = serde_json::from_str(&v.manifest)?;
        let body = registration_entry(
            &agent_id,
            v.version,
            &manifest,
            &v.manifest_hash,
            &v.signature,
            &v.key_id,
        );
        s.recorder.agent_registered(&tenant, body).await?;
        tracing::warn!(%tenant, %agent_id, version = v.version, "recorded a registration missing from the ledger");
    }
    Ok(())
}

/// How long a cached agent is trusted before it is read again (another replica may have registered a version).
const AGENT_TTL: Duration = Duration::from_secs(5);

/// (tenant, agent id).
type AgentKey = (Arc<str>, Box<str>);

/// Agents by (tenant, agent id) for the decision hot path, so a decision does not pay a store read.
#[derive(Default)]
pub struct AgentCache {
    map: RwLock<HashMap<AgentKey, (Arc<AgentRef>, Instant)>>,
}

impl AgentCache {
    /// The agent's latest version, from cache or store; `not_found` for an unknown id.
    pub async fn get(&self, s: &SharedState, tenant: &Arc<str>, agent_id: &str) -> ApiResult<Arc<AgentRef>> {
        let key = (tenant.clone(), Box::<str>::from(agent_id));
        if let Some((a, at)) = self.map.read().get(&key)
            && at.elapsed() < AGENT_TTL
        {
            return Ok(a.clone());
        }
        let rec = s
            .store
            .get_agent(tenant, agent_id)
            .await
            .map_err(ApiError::unavailable)?
            .ok_or_else(|| ApiError::not_found(format!("unknown agentId '{agent_id}'")))?;
        let latest = rec
            .latest()
            .ok_or_else(|| ApiError::internal("agent without versions"))?;
        let a = Arc::new(AgentRef {
            id: rec.agent_id.clone(),
            name: rec.name.clone(),
            version: Some(latest.version.to_string()),
            manifest_hash: Some(latest.manifest_hash.clone()),
        });
        let mut map = self.map.write();
        if map.len() > 100_000 {
            map.clear();
        }
        map.insert(key, (a.clone(), Instant::now()));
        Ok(a)
    }

    /// Drops a cached agent (after a new version is registered here).
    pub fn forget(&self, tenant: &Arc<str>, agent_id: &str) {
        self.map
            .write()
            .remove(&(tenant.clone(), Box::<str>::from(agent_id)));
    }
}

async fn register(
    State(s): State<SharedState>,
    caller: Caller,
    body: RawJson,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    caller.require(&[Role::Admin, Role::Agent])?;
    let manifest: Manifest = body.parse()?;
    manifest
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    caller.require_agent(None, &manifest.name)?;
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
            s.agents.forget(&caller.tenant, &agent_id);
            let body = registration_entry(
                &agent_id,
                version,
                &manifest,
                &manifest_hash,
                &signature,
                &s.registry_key.key_id(),
            );
            // The entry links itself to this version when it is indexed (see `Store::index_entries`).
            let rec = s
                .recorder
                .agent_registered(&caller.tenant, body)
                .await
                .map_err(ApiError::unavailable)?;
            Ok((
                StatusCode::CREATED,
                Json(Registered {
                    agent_id,
                    manifest_hash,
                    registered_at,
                    version,
                    signature,
                    signature_key_id: s.registry_key.key_id(),
                    lineage_id: rec.lineage_id,
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
    ApiPath(agent_id): ApiPath<String>,
) -> ApiResult<Json<AgentView>> {
    let agent = s
        .store
        .get_agent(&caller.tenant, &agent_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("unknown agentId '{agent_id}'")))?;
    Ok(Json(agent_view(&agent, true)?))
}
