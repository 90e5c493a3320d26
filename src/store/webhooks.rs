//! Where each webhook's delivery stands: the id of the last event it delivered (or gave up on), so a restart
//! resumes delivery from the event stream with nothing skipped and nothing sent twice but the one in flight.

use super::{Result, Store};
use rusqlite::{OptionalExtension, params};

impl Store {
    /// The last event a webhook is done with, if it has started.
    pub async fn webhook_cursor(&self, name: &str) -> Result<Option<String>> {
        let n = name.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT last_event FROM webhook_cursors WHERE name = ?1")?
                    .query_row(params![n], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    /// Records that a webhook is done with `last_event` (delivered, or given up after its retries).
    pub async fn set_webhook_cursor(&self, name: &str, last_event: &str, at: &str) -> Result<()> {
        let (n, e, at) = (name.to_owned(), last_event.to_owned(), at.to_owned());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO webhook_cursors(name, last_event, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET last_event = excluded.last_event, updated_at = excluded.updated_at",
            )?
            .execute(params![n, e, at])?;
            Ok(())
        })
        .await
    }
}
