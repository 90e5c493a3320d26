//! Agent registry rows: one `agents` row per (tenant, name) with a stable id, one `agent_versions` row per manifest.

use super::{Result, Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// A version to register. The caller computes the hash and signature; the store decides version numbers.
#[derive(Debug, Clone)]
pub struct NewAgentVersion {
    /// Tenant the agent belongs to.
    pub tenant: String,
    /// Id to use if this name is new in the tenant.
    pub candidate_id: String,
    /// Agent name (unique per tenant).
    pub name: String,
    /// Canonical JSON of the manifest.
    pub manifest: String,
    /// `sha256:<hex>` over the canonical manifest.
    pub manifest_hash: String,
    /// kla's signature over the manifest hash.
    pub signature: String,
    /// Id of the key that made `signature`.
    pub key_id: String,
    /// RFC 3339 registration time.
    pub registered_at: String,
}

/// One stored version of an agent.
#[derive(Debug, Clone)]
pub struct AgentVersionRecord {
    /// 1-based version number.
    pub version: i64,
    /// Canonical JSON of the manifest.
    pub manifest: String,
    /// `sha256:<hex>`.
    pub manifest_hash: String,
    /// kla's signature over the manifest hash.
    pub signature: String,
    /// Key id of the signature.
    pub key_id: String,
    /// RFC 3339.
    pub registered_at: String,
    /// Ledger lineage id of the registration, once recorded.
    pub lineage_id: Option<String>,
}

/// An agent with all its versions, newest last.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    /// Stable id (`agt_...`).
    pub agent_id: String,
    /// Name, unique per tenant.
    pub name: String,
    /// RFC 3339 time of the first registration.
    pub created_at: String,
    /// Versions in ascending order (never empty).
    pub versions: Vec<AgentVersionRecord>,
}

impl AgentRecord {
    /// The newest version.
    pub fn latest(&self) -> Option<&AgentVersionRecord> {
        self.versions.last()
    }
}

/// What a registration did.
#[derive(Debug, Clone)]
pub enum RegisterOutcome {
    /// A new agent or a new version was stored.
    Created {
        /// Stable agent id.
        agent_id: String,
        /// The version number stored.
        version: i64,
    },
    /// The latest version already has this exact manifest.
    Duplicate {
        /// Stable agent id.
        agent_id: String,
        /// The existing version with the same manifest.
        version: i64,
    },
}

impl Store {
    /// Registers a manifest: new name → new agent (v1); same name, new manifest → next version under the same id;
    /// same name, same manifest as the latest version → `Duplicate`. Atomic.
    pub async fn register_agent(&self, v: NewAgentVersion) -> Result<RegisterOutcome> {
        self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT agent_id FROM agents WHERE tenant = ?1 AND name = ?2",
                    params![v.tenant, v.name],
                    |r| r.get(0),
                )
                .optional()?;
            let (agent_id, version) = match existing {
                None => {
                    tx.execute(
                        "INSERT INTO agents(tenant, agent_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![v.tenant, v.candidate_id, v.name, v.registered_at],
                    )?;
                    (v.candidate_id.clone(), 1)
                }
                Some(agent_id) => {
                    let (latest, hash): (i64, String) = tx.query_row(
                        "SELECT version, manifest_hash FROM agent_versions
                         WHERE tenant = ?1 AND agent_id = ?2 ORDER BY version DESC LIMIT 1",
                        params![v.tenant, agent_id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    if hash == v.manifest_hash {
                        return Ok(RegisterOutcome::Duplicate {
                            agent_id,
                            version: latest,
                        });
                    }
                    (agent_id, latest + 1)
                }
            };
            tx.execute(
                "INSERT INTO agent_versions(tenant, agent_id, version, manifest, manifest_hash, signature, key_id,
                                            registered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    v.tenant,
                    agent_id,
                    version,
                    v.manifest,
                    v.manifest_hash,
                    v.signature,
                    v.key_id,
                    v.registered_at
                ],
            )?;
            tx.commit()?;
            Ok(RegisterOutcome::Created { agent_id, version })
        })
        .await
    }

    /// Versions registered but not yet recorded in the ledger (after a crash between the two writes).
    pub async fn agent_versions_without_lineage(&self) -> Result<Vec<(String, String, AgentVersionRecord)>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT tenant, agent_id, version, manifest, manifest_hash, signature, key_id, registered_at
                 FROM agent_versions WHERE lineage_id IS NULL ORDER BY registered_at",
            )?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    AgentVersionRecord {
                        version: r.get(2)?,
                        manifest: r.get(3)?,
                        manifest_hash: r.get(4)?,
                        signature: r.get(5)?,
                        key_id: r.get(6)?,
                        registered_at: r.get(7)?,
                        lineage_id: None,
                    },
                ))
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One agent of a tenant with all versions, or `None`.
    pub async fn get_agent(&self, tenant: &str, agent_id: &str) -> Result<Option<AgentRecord>> {
        let (t, a) = (tenant.to_owned(), agent_id.to_owned());
        self.read(move |c| load_agents(c, &t, Some(&a)).map(|mut v| v.pop()))
            .await
    }

    /// Every agent of a tenant, ordered by name.
    pub async fn list_agents(&self, tenant: &str) -> Result<Vec<AgentRecord>> {
        let t = tenant.to_owned();
        self.read(move |c| load_agents(c, &t, None)).await
    }
}

fn load_agents(c: &rusqlite::Connection, tenant: &str, agent_id: Option<&str>) -> Result<Vec<AgentRecord>> {
    // Two statements rather than `(?2 IS NULL OR ...)`, which would stop SQLite from using the primary key.
    const COLS: &str =
        "SELECT a.agent_id, a.name, a.created_at, v.version, v.manifest, v.manifest_hash, v.signature,
                v.key_id, v.registered_at, v.lineage_id
         FROM agents a JOIN agent_versions v ON v.tenant = a.tenant AND v.agent_id = a.agent_id";
    let mut st = match agent_id {
        Some(_) => c.prepare_cached(&format!(
            "{COLS} WHERE a.tenant = ?1 AND a.agent_id = ?2 ORDER BY v.version"
        ))?,
        None => c.prepare_cached(&format!(
            "{COLS} WHERE a.tenant = ?1 AND ?2 IS NULL ORDER BY a.name, v.version"
        ))?,
    };
    let mut out: Vec<AgentRecord> = Vec::new();
    let mut rows = st.query(params![tenant, agent_id])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let version = AgentVersionRecord {
            version: r.get(3)?,
            manifest: r.get(4)?,
            manifest_hash: r.get(5)?,
            signature: r.get(6)?,
            key_id: r.get(7)?,
            registered_at: r.get(8)?,
            lineage_id: r.get(9)?,
        };
        match out.last_mut() {
            Some(last) if last.agent_id == id => last.versions.push(version),
            _ => out.push(AgentRecord {
                agent_id: id,
                name: r.get(1)?,
                created_at: r.get(2)?,
                versions: vec![version],
            }),
        }
    }
    if out.iter().any(|a| a.versions.is_empty()) {
        return Err(StoreError::Corrupt("agent without versions".into()));
    }
    Ok(out)
}
