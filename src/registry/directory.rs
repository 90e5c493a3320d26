//! The agent directory: registering agents (ledger first, like every record) and looking them up, for every entry
//! point that names an agent (decisions now; the proxy and executions next).
//!
//! A registration redacts the manifest's free text (as a decision's context is redacted), assigns the agent id and
//! version number, records an `agent.registered` entry, and waits for its index rows, all under the turn of the
//! (tenant, name) (`crate::coord`), so two registrations of one name cannot take the same version. The store's agent tables are derived from those entries (`recorder::record`), and lookups on the
//! decision path go through a short-lived cache. Knows no HTTP and no SQL.

use super::{Manifest, RegistryError, manifest_hash, new_agent_id, sign_hash};
use crate::auth::Caller;
use crate::auth::keys::KeyFile;
use crate::coord::Turns;
use crate::policy::AgentRef;
use crate::recorder::{Record, Recorder, Registration};
use crate::redact::Redaction;
use crate::store::AgentRecord;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a cached agent is trusted before it is read again (another replica may have registered a version).
const AGENT_TTL: Duration = Duration::from_secs(5);
/// Most agents cached; the cache is cleared when full (it refills from the store).
const CACHE_MAX: usize = 100_000;

/// (tenant, agent id).
type AgentKey = (Arc<str>, Box<str>);

/// A new registration as answered to its caller.
#[derive(Debug, Clone)]
pub struct Registered {
    pub agent_id: String,
    pub version: i64,
    pub manifest_hash: String,
    pub signature: String,
    pub signature_key_id: String,
    /// The time of the ledger entry.
    pub registered_at: String,
    pub lineage_id: String,
}

/// The newest version of one name, as this process last registered it.
#[derive(Clone)]
struct Latest {
    agent_id: String,
    version: i64,
    manifest_hash: String,
}

/// Registers and looks up agents. Cheap to share behind an `Arc`.
pub struct Agents {
    recorder: Recorder,
    key: KeyFile,
    /// A manifest's free text passes the tenant's redactor before it is recorded.
    redaction: Arc<Redaction>,
    cache: RwLock<HashMap<AgentKey, (Arc<AgentRef>, Instant)>>,
    /// One registration of a (tenant, name) at a time.
    turns: Turns,
    /// What this process registered, per (tenant, name): a registration takes the newer of this and the index,
    /// so a version is never reused even while an index commit is being retried.
    latest: Mutex<HashMap<(String, String), Latest>>,
}

impl Agents {
    /// A directory reading and recording through `recorder`, signing manifests with `key`, redacting their free
    /// text with `redaction`.
    pub fn new(recorder: Recorder, key: KeyFile, redaction: Arc<Redaction>) -> Agents {
        Agents {
            recorder,
            key,
            redaction,
            cache: RwLock::new(HashMap::new()),
            turns: Turns::new(),
            latest: Mutex::new(HashMap::new()),
        }
    }

    /// The agent's latest version, from cache or store; [`RegistryError::UnknownAgent`] for an id the tenant does
    /// not have.
    pub async fn get(&self, tenant: &Arc<str>, agent_id: &str) -> Result<Arc<AgentRef>, RegistryError> {
        let key = (tenant.clone(), Box::<str>::from(agent_id));
        if let Some((a, at)) = self.cache.read().get(&key)
            && at.elapsed() < AGENT_TTL
        {
            return Ok(a.clone());
        }
        // No barrier: a registration is answered only once indexed, so every agent a caller can name is there.
        let rec = self
            .recorder
            .index_as_is()
            .get_agent(tenant, agent_id)
            .await?
            .ok_or_else(|| RegistryError::UnknownAgent(agent_id.to_owned()))?;
        let latest = rec
            .latest()
            .ok_or_else(|| RegistryError::Corrupt(format!("agent {agent_id} has no versions")))?;
        let a = Arc::new(AgentRef {
            id: rec.agent_id.clone(),
            name: rec.name.clone(),
            version: Some(latest.version.to_string()),
            manifest_hash: Some(latest.manifest_hash.clone()),
        });
        let mut cache = self.cache.write();
        if cache.len() > CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, (a.clone(), Instant::now()));
        Ok(a)
    }

    /// One agent of a tenant with every version.
    pub async fn record(&self, tenant: &str, agent_id: &str) -> Result<AgentRecord, RegistryError> {
        self.recorder
            .index_as_is()
            .get_agent(tenant, agent_id)
            .await?
            .ok_or_else(|| RegistryError::UnknownAgent(agent_id.to_owned()))
    }

    /// Every agent of a tenant, by name.
    pub async fn list(&self, tenant: &str) -> Result<Vec<AgentRecord>, RegistryError> {
        Ok(self.recorder.index_as_is().list_agents(tenant).await?)
    }

    /// Registers `manifest` for the caller's tenant: a new name is a new agent (version 1); a known name (compared
    /// in canonical form, so case is ignored) with a changed manifest is the next version under the same id; the
    /// latest manifest again is [`RegistryError::Duplicate`]. Answers once the entry is durable and indexed.
    pub async fn register(&self, caller: &Caller, manifest: Manifest) -> Result<Registered, RegistryError> {
        // The name in canonical form from here on: the (tenant, name) lock, the store's UNIQUE (tenant, name) and
        // the version lookup all see one spelling, so `Claims-Triage` is the agent `claims-triage`, never a second one.
        let manifest = manifest.validate()?;
        caller.require_agent(None, &manifest.name)?;
        let manifest = manifest.redacted(&self.redaction.redactor(&caller.tenant))?;
        let canonical = manifest.canonical()?;
        let hash = manifest_hash(&canonical);
        let tenant = caller.tenant.to_string();
        let name = manifest.name.clone();
        let _turn = self.turns.take(&(tenant.as_str(), name.as_str())).await;
        let stored = self
            .recorder
            .indexed()
            .await
            .latest_agent_version(&tenant, &name)
            .await?;
        let remembered = self.latest.lock().get(&(tenant.clone(), name.clone())).cloned();
        let newest = match (stored, remembered) {
            (Some((agent_id, version, manifest_hash)), Some(r)) if r.version <= version => Some(Latest {
                agent_id,
                version,
                manifest_hash,
            }),
            (_, Some(r)) => Some(r),
            (Some((agent_id, version, manifest_hash)), None) => Some(Latest {
                agent_id,
                version,
                manifest_hash,
            }),
            (None, None) => None,
        };
        let (agent_id, version) = match newest {
            Some(l) if l.manifest_hash == hash => {
                return Err(RegistryError::Duplicate {
                    name,
                    agent_id: l.agent_id,
                    version: l.version,
                });
            }
            Some(l) => (l.agent_id, l.version + 1),
            None => (new_agent_id(), 1),
        };
        let signature = sign_hash(&self.key.signing, &hash);
        let key_id = self.key.key_id();
        let rec = self
            .recorder
            .record(Record::AgentRegistered(Registration {
                tenant: tenant.clone(),
                agent_id: agent_id.clone(),
                name: name.clone(),
                version,
                manifest: canonical,
                manifest_hash: hash.clone(),
                signature: signature.clone(),
                signature_key_id: key_id.clone(),
            }))
            .await?;
        self.latest.lock().insert(
            (tenant, name),
            Latest {
                agent_id: agent_id.clone(),
                version,
                manifest_hash: hash.clone(),
            },
        );
        self.forget(&caller.tenant, &agent_id);
        tracing::info!(tenant = %caller.tenant, agent_id, version, "agent registered");
        Ok(Registered {
            agent_id,
            version,
            manifest_hash: hash,
            signature,
            signature_key_id: key_id,
            registered_at: rec.time,
            lineage_id: rec.lineage_id,
        })
    }

    /// Drops a cached agent (after a new version is registered here).
    fn forget(&self, tenant: &Arc<str>, agent_id: &str) {
        self.cache
            .write()
            .remove(&(tenant.clone(), Box::<str>::from(agent_id)));
    }
}
