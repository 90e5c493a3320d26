//! Policy pack floors: per pack name, the newest signed version kla has activated. The policy manager refuses a
//! signed pack older than its floor (rollback protection); the store only keeps the rows.

use super::{Result, Store};
use rusqlite::{OptionalExtension, params};

impl Store {
    /// The recorded floor of pack `name`: `(version, digest)`.
    pub async fn pack_floor(&self, name: &str) -> Result<Option<(String, String)>> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT version, digest FROM pack_floors WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    /// Sets the floor of pack `name` (the caller decides whether it may go down). Durable on return: the write
    /// connection commits with `synchronous=FULL`.
    pub async fn set_pack_floor(&self, name: &str, version: &str, digest: &str, at: &str) -> Result<()> {
        let (name, version, digest, at) = (
            name.to_owned(),
            version.to_owned(),
            digest.to_owned(),
            at.to_owned(),
        );
        self.write(move |c| {
            c.execute(
                "INSERT INTO pack_floors(name, version, digest, raised_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO UPDATE SET version = excluded.version, digest = excluded.digest,
                                                 raised_at = excluded.raised_at",
                params![name, version, digest, at],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_floor_is_kept_per_name_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.pack_floor("p").await.unwrap(), None);
            s.set_pack_floor("p", "1.2.0", "sha256:aa", "2026-01-01T00:00:00Z")
                .await
                .unwrap();
            s.set_pack_floor("q", "0.1.0", "sha256:bb", "2026-01-01T00:00:00Z")
                .await
                .unwrap();
            s.set_pack_floor("p", "1.3.0", "sha256:cc", "2026-01-02T00:00:00Z")
                .await
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            s.pack_floor("p").await.unwrap(),
            Some(("1.3.0".into(), "sha256:cc".into()))
        );
        assert_eq!(
            s.pack_floor("q").await.unwrap(),
            Some(("0.1.0".into(), "sha256:bb".into()))
        );
    }
}
