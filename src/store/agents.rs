//! Agent registry rows: one `agents` row per (tenant, name) with a stable id, one `agent_versions` row per manifest.
//! Both are part of the index derived from the ledger (written by `index_entries`, rebuilt by re-indexing).

use super::{Result, Store, StoreError};
use rusqlite::{OptionalExtension, params};

/// One registered agent version as the index stores it, rebuilt from its `agent.registered` ledger entry: the ledger
/// is written first, so the store holds no registration the ledger does not.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentVersionRow {
    pub tenant: String,
    /// Stable id (`agt_...`), the same for every version of one name in a tenant.
    pub agent_id: String,
    /// Unique per tenant.
    pub name: String,
    /// 1-based.
    pub version: i64,
    /// The manifest in canonical (RFC 8785) form.
    pub manifest: String,
    /// `sha256:<hex>` over `manifest`.
    pub manifest_hash: String,
    /// kla's registry-key signature over the manifest hash.
    pub signature: String,
    /// Id of the key that made `signature`.
    pub key_id: String,
    /// RFC 3339; the time of the ledger entry.
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

impl Store {
    /// The newest version of the agent called `name` in a tenant: `(agent id, version, manifest hash)`.
    pub async fn latest_agent_version(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<(String, i64, String)>> {
        let (t, n) = (tenant.to_owned(), name.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT a.agent_id, v.version, v.manifest_hash
                 FROM agents a JOIN agent_versions v ON v.tenant = a.tenant AND v.agent_id = a.agent_id
                 WHERE a.tenant = ?1 AND a.name = ?2 ORDER BY v.version DESC LIMIT 1",
                params![t, n],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
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

    /// One page of a tenant's agents ordered by name, each with its **latest version only**: the agents named
    /// after `after` (all when `None`), at most `limit`. With `agent` (an id or a name, as a token's `agent` claim
    /// names it), only the agent with that id or name.
    pub async fn list_agents_page(
        &self,
        tenant: &str,
        agent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>> {
        use rusqlite::types::Value as V;
        let mut p = vec![
            V::Text(tenant.to_owned()),
            // Names are never empty, so every name sorts after "".
            V::Text(after.unwrap_or("").to_owned()),
            V::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
        ];
        let filter = match agent {
            Some(a) => {
                p.push(V::Text(a.to_owned()));
                " AND (a.agent_id = ?4 OR a.name = ?4)"
            }
            None => "",
        };
        let sql = format!(
            "SELECT a.agent_id, a.name, a.created_at, v.version, v.manifest, v.manifest_hash, v.signature,
                    v.key_id, v.registered_at, v.lineage_id
             FROM agents a JOIN agent_versions v ON v.tenant = a.tenant AND v.agent_id = a.agent_id
             WHERE a.tenant = ?1 AND a.name > ?2{filter}
               AND v.version = (SELECT MAX(m.version) FROM agent_versions m
                                WHERE m.tenant = a.tenant AND m.agent_id = a.agent_id)
             ORDER BY a.name LIMIT ?3"
        );
        self.read(move |c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(p), |r| {
                Ok(AgentRecord {
                    agent_id: r.get(0)?,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    versions: vec![AgentVersionRecord {
                        version: r.get(3)?,
                        manifest: r.get(4)?,
                        manifest_hash: r.get(5)?,
                        signature: r.get(6)?,
                        key_id: r.get(7)?,
                        registered_at: r.get(8)?,
                        lineage_id: r.get(9)?,
                    }],
                })
            })?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
        .await
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
