//! Embedded, ordered schema migrations. Version N is `MIGRATIONS[N-1]`; `PRAGMA user_version` records the last
//! one applied. Migrations are append-only: never edit one that has shipped.

use super::{Result, StoreError};
use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: agents, idempotency, meta.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE agents (
        tenant      TEXT NOT NULL,
        agent_id    TEXT NOT NULL,
        name        TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        PRIMARY KEY (tenant, agent_id),
        UNIQUE (tenant, name)
    );
    CREATE TABLE agent_versions (
        tenant         TEXT NOT NULL,
        agent_id       TEXT NOT NULL,
        version        INTEGER NOT NULL,
        manifest       TEXT NOT NULL,
        manifest_hash  TEXT NOT NULL,
        signature      TEXT NOT NULL,
        key_id         TEXT NOT NULL,
        registered_at  TEXT NOT NULL,
        lineage_id     TEXT,
        PRIMARY KEY (tenant, agent_id, version),
        FOREIGN KEY (tenant, agent_id) REFERENCES agents(tenant, agent_id)
    );
    CREATE TABLE idempotency (
        tenant        TEXT NOT NULL,
        key           TEXT NOT NULL,
        request_hash  TEXT NOT NULL,
        state         TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
        status        INTEGER,
        body          BLOB,
        content_type  TEXT,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)
    );
    CREATE INDEX idempotency_created ON idempotency(created_at);
    "#,
    // 2: decisions and the lineage index, both derived from the ledger (the source of truth; bodies live there).
    //    Lineage rows are keyed by ledger index (appends in key order); decisions are one B-tree (WITHOUT ROWID).
    r#"
    CREATE TABLE decisions (
        decision_id   TEXT PRIMARY KEY,
        tenant        TEXT NOT NULL,
        agent_id      TEXT NOT NULL,
        action        TEXT NOT NULL,
        decision      TEXT NOT NULL,
        lineage_id    TEXT NOT NULL,
        ledger_index  INTEGER NOT NULL,
        created_at    TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE lineage (
        ledger_index  INTEGER PRIMARY KEY,
        lineage_id    TEXT NOT NULL UNIQUE,
        tenant        TEXT NOT NULL,
        kind          TEXT NOT NULL,
        decision_id   TEXT,
        trace_id      TEXT,
        execution_id  TEXT,
        created_at    TEXT NOT NULL
    );
    CREATE INDEX lineage_trace ON lineage(tenant, trace_id) WHERE trace_id IS NOT NULL;
    CREATE INDEX lineage_execution ON lineage(tenant, execution_id) WHERE execution_id IS NOT NULL;
    "#,
    // 3: the highest version of each signed policy pack ever activated (rollback protection).
    r#"
    CREATE TABLE pack_floors (
        name        TEXT PRIMARY KEY,
        version     TEXT NOT NULL,
        digest      TEXT NOT NULL,
        raised_at   TEXT NOT NULL
    );
    "#,
    // 4: agent registrations are written to the ledger first and indexed from it, like every other entry. A
    //    version stored before its ledger entry (a crash between the two writes of the older order) was never
    //    acknowledged to its caller: drop it, so every stored registration is one the ledger holds.
    r#"
    DELETE FROM agent_versions WHERE lineage_id IS NULL;
    DELETE FROM agents WHERE NOT EXISTS
        (SELECT 1 FROM agent_versions v WHERE v.tenant = agents.tenant AND v.agent_id = agents.agent_id);
    "#,
    // 5: approvals of the Decision Desk, derived from the ledger: created by a `require_approval` decision's
    //    entry, moved on by `approval.*` entries (`updated_index` keeps replays idempotent and in order).
    r#"
    CREATE TABLE approvals (
        approval_id     TEXT PRIMARY KEY,
        tenant          TEXT NOT NULL,
        decision_id     TEXT NOT NULL,
        agent_id        TEXT NOT NULL,
        action          TEXT NOT NULL,
        execution_id    TEXT,
        created_at      TEXT NOT NULL,
        expires_at      TEXT NOT NULL,
        expires_ms      INTEGER NOT NULL,
        decision_index  INTEGER NOT NULL,
        status          TEXT NOT NULL,
        state           TEXT,
        updated_index   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX approvals_decision ON approvals(tenant, decision_id);
    CREATE INDEX approvals_list ON approvals(tenant, decision_index);
    CREATE INDEX approvals_due ON approvals(expires_ms) WHERE status = 'PENDING';
    CREATE INDEX lineage_decision_chain ON lineage(tenant, decision_id) WHERE kind <> 'decision';
    "#,
    // 6: Decision Desk sign-in links used so far (each signs in once); a row is kept until its link has expired.
    r#"
    CREATE TABLE desk_links (
        jti         TEXT PRIMARY KEY,
        tenant      TEXT NOT NULL,
        subject     TEXT NOT NULL,
        expires_at  INTEGER NOT NULL,
        used_at     TEXT NOT NULL
    );
    CREATE INDEX desk_links_expiry ON desk_links(expires_at);
    "#,
    // 7: how far each webhook's delivery has come in the event stream (the stream itself is the ledger).
    r#"
    CREATE TABLE webhook_cursors (
        name        TEXT PRIMARY KEY,
        last_event  TEXT NOT NULL,
        updated_at  TEXT NOT NULL
    );
    "#,
    // 8: approvals bound to their action's digest, so a retried tool call finds the approval a person gave it, and
    //    the decision that used an approval up (each approval lets one call through).
    r#"
    ALTER TABLE approvals ADD COLUMN action_digest TEXT;
    ALTER TABLE approvals ADD COLUMN used_by TEXT;
    CREATE INDEX approvals_reuse ON approvals(tenant, action_digest) WHERE used_by IS NULL;
    "#,
    // 9: executions, derived from the ledger: created by an execution's first `execution.transition` entry,
    //    moved on by each later one (`updated_index` keeps replays idempotent and in order). The input stays in
    //    the ledger (`created_index`). `executions_queue` is the queue's order: priority, then age.
    r#"
    CREATE TABLE executions (
        execution_id   TEXT PRIMARY KEY,
        tenant         TEXT NOT NULL,
        agent_id       TEXT NOT NULL,
        agent_name     TEXT NOT NULL,
        priority       INTEGER NOT NULL,
        max_steps      INTEGER,
        max_cost_usd   REAL,
        retry_of       TEXT,
        created_at     TEXT NOT NULL,
        created_index  INTEGER NOT NULL,
        status         TEXT NOT NULL,
        started_at     TEXT,
        completed_at   TEXT,
        final_result   TEXT,
        error_log      TEXT,
        updated_index  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX executions_list ON executions(tenant, created_index);
    CREATE INDEX executions_queue ON executions(priority DESC, created_index) WHERE status = 'QUEUED';
    "#,
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies every migration newer than the file's `user_version`, each in its own transaction.
pub(super) fn apply(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied store migration");
    }
    Ok(())
}
