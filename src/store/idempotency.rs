//! Durable idempotency keys, per tenant, kept for 24 hours.

use super::{Result, Store};
use rusqlite::{OptionalExtension, params};

/// How long a key is remembered.
pub const TTL_SECS: i64 = 24 * 3600;
/// How long an in-flight reservation holds its key. Requests run to completion in their own task, so a longer
/// reservation means its request died with a crashed process or a replica that went away.
pub const IN_FLIGHT_LEASE_SECS: i64 = 60;

/// A response recorded for replay.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Content type of the body.
    pub content_type: Option<String>,
}

/// What `idempotency_begin` found.
#[derive(Debug, Clone)]
pub enum IdempotencyBegin {
    /// The key is new: it is now reserved for this request, which must call `idempotency_finish` or
    /// `idempotency_release`.
    Reserved,
    /// The key already completed with the same request: replay this response.
    Replay(StoredResponse),
    /// The key was used with a different request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

/// (request_hash, state, status, body, content_type)
type Row = (String, String, Option<u16>, Option<Vec<u8>>, Option<String>);

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Store {
    /// Reserves `key` for a request whose fingerprint is `request_hash`, or says why not. Atomic, so two
    /// concurrent requests with one key see exactly one `Reserved`.
    pub async fn idempotency_begin(
        &self,
        tenant: &str,
        key: &str,
        request_hash: &str,
    ) -> Result<IdempotencyBegin> {
        let (t, k, h) = (tenant.to_owned(), key.to_owned(), request_hash.to_owned());
        self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = now_secs();
            tx.execute(
                "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2
                 AND (created_at < ?3 OR (state = 'in_flight' AND created_at < ?4))",
                params![t, k, now - TTL_SECS, now - IN_FLIGHT_LEASE_SECS],
            )?;
            let row: Option<Row> = tx
                .query_row(
                    "SELECT request_hash, state, status, body, content_type FROM idempotency
                     WHERE tenant = ?1 AND key = ?2",
                    params![t, k],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            let out = match row {
                None => {
                    tx.execute(
                        "INSERT INTO idempotency(tenant, key, request_hash, state, created_at)
                         VALUES (?1, ?2, ?3, 'in_flight', ?4)",
                        params![t, k, h, now],
                    )?;
                    IdempotencyBegin::Reserved
                }
                Some((stored_hash, _, _, _, _)) if stored_hash != h => IdempotencyBegin::Mismatch,
                Some((_, state, Some(status), body, content_type)) if state == "done" => {
                    IdempotencyBegin::Replay(StoredResponse {
                        status,
                        body: body.unwrap_or_default(),
                        content_type,
                    })
                }
                Some(_) => IdempotencyBegin::InFlight,
            };
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Records the final response of a reserved key.
    pub async fn idempotency_finish(&self, tenant: &str, key: &str, resp: StoredResponse) -> Result<()> {
        let (t, k) = (tenant.to_owned(), key.to_owned());
        self.write(move |c| {
            c.execute(
                "UPDATE idempotency SET state = 'done', status = ?3, body = ?4, content_type = ?5
                 WHERE tenant = ?1 AND key = ?2",
                params![t, k, resp.status, resp.body, resp.content_type],
            )?;
            Ok(())
        })
        .await
    }

    /// Frees a reserved key (the request failed in a way a retry may fix).
    pub async fn idempotency_release(&self, tenant: &str, key: &str) -> Result<()> {
        let (t, k) = (tenant.to_owned(), key.to_owned());
        self.write(move |c| {
            c.execute(
                "DELETE FROM idempotency WHERE tenant = ?1 AND key = ?2 AND state = 'in_flight'",
                params![t, k],
            )?;
            Ok(())
        })
        .await
    }

    /// Deletes keys older than the TTL; returns how many.
    pub async fn idempotency_purge(&self) -> Result<usize> {
        self.write(|c| {
            Ok(c.execute(
                "DELETE FROM idempotency WHERE created_at < ?1",
                params![now_secs() - TTL_SECS],
            )?)
        })
        .await
    }
}

/// Drops reservations left by a previous process: nothing can still be running them.
pub(super) fn clear_in_flight(c: &rusqlite::Connection) -> Result<()> {
    let n = c.execute("DELETE FROM idempotency WHERE state = 'in_flight'", [])?;
    if n > 0 {
        tracing::warn!(
            count = n,
            "dropped idempotency reservations left in flight by a previous run"
        );
    }
    Ok(())
}
