//! Decision Desk sign-in links that have been used: each link signs in once.

use super::{Result, Store};
use rusqlite::params;

/// How long after its expiry a used link's row is kept: beyond the token verifier's leeway, so a link is never
/// forgotten while it still verifies.
const KEEP_AFTER_EXPIRY_SECS: i64 = 300;

impl Store {
    /// Records the use of the sign-in link `jti` (of `tenant` and `subject`, valid until `expires_at`, unix
    /// seconds) at `used_at`. True the first time; false if the link was used before. Atomic, so of two concurrent
    /// uses exactly one is first. Rows of links long expired are dropped on the way.
    pub async fn desk_link_use(
        &self,
        jti: &str,
        tenant: &str,
        subject: &str,
        expires_at: u64,
        used_at: &str,
    ) -> Result<bool> {
        let (jti, tenant, subject, used_at) = (
            jti.to_owned(),
            tenant.to_owned(),
            subject.to_owned(),
            used_at.to_owned(),
        );
        let expires_at = i64::try_from(expires_at).unwrap_or(i64::MAX);
        self.write(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            tx.execute(
                "DELETE FROM desk_links WHERE expires_at < ?1",
                params![now - KEEP_AFTER_EXPIRY_SECS],
            )?;
            let first = tx.execute(
                "INSERT INTO desk_links(jti, tenant, subject, expires_at, used_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(jti) DO NOTHING",
                params![jti, tenant, subject, expires_at, used_at],
            )? == 1;
            tx.commit()?;
            Ok(first)
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_is_used_once_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() as u64 + 600;
        let store = Store::open(dir.path()).unwrap();
        assert!(
            store
                .desk_link_use("dl_1", "acme", "alice", exp, "t")
                .await
                .unwrap()
        );
        assert!(
            !store
                .desk_link_use("dl_1", "acme", "alice", exp, "t")
                .await
                .unwrap()
        );
        assert!(
            store
                .desk_link_use("dl_2", "acme", "alice", exp, "t")
                .await
                .unwrap()
        );
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(
            !store
                .desk_link_use("dl_1", "acme", "alice", exp, "t")
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn concurrent_uses_of_one_link_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() as u64 + 600;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { s.desk_link_use("dl_x", "acme", "a", exp, "t").await.unwrap() })
            })
            .collect();
        let mut firsts = 0;
        for t in tasks {
            firsts += usize::from(t.await.unwrap());
        }
        assert_eq!(firsts, 1);
    }
}
