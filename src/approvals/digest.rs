//! The action digest that binds an approval to one exact action.
//!
//! HMAC-SHA256, keyed with a secret in the data dir, over the RFC 8785 form of
//! `{"action","agentId","context","tenant","tool"}`. Keyed, not a plain hash: the digest is recorded in the
//! ledger, which anyone may read, and a plain hash of a small context (a card number, an account id) could be
//! found by trying every value. Computed over the action as the agent sent it, before redaction, so an approval
//! can never let through a call that differs in a value the ledger shows only masked.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// The digest key. Several kla replicas that share approvals must share it.
#[derive(Clone)]
pub struct DigestKey([u8; 32]);

impl DigestKey {
    /// Where the key lives in a data dir.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("keys").join("action-digest.key")
    }

    /// Reads the key (hex), or creates one (readable by its owner only) on first start.
    pub fn load_or_create(path: &Path) -> anyhow::Result<DigestKey> {
        use anyhow::Context;
        if path.exists() {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let bytes = hex::decode(text.trim()).with_context(|| format!("{} is not hex", path.display()))?;
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| anyhow::anyhow!("{} must hold 32 bytes", path.display()))?;
            return Ok(DigestKey(key));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let key: [u8; 32] = rand::random();
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(hex::encode(key).as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(DigestKey(key))
    }

    /// A key from bytes (tests).
    pub fn from_bytes(key: [u8; 32]) -> DigestKey {
        DigestKey(key)
    }

    /// `hmac-sha256:<hex>` of the action.
    pub fn action_digest(
        &self,
        tenant: &str,
        agent_id: &str,
        action: &str,
        context: &Value,
        tool: Option<&Value>,
    ) -> String {
        let doc = json!({"action": action, "agentId": agent_id, "context": context, "tenant": tenant, "tool": tool});
        // RFC 8785 of a value built from JSON cannot fail but for non-finite numbers, which JSON cannot hold.
        let canonical = serde_json_canonicalizer::to_vec(&doc).unwrap_or_default();
        // HMAC pads a key shorter than the hash's block to the block with zeros (RFC 2104), so the padded key is the
        // same key, given in the infallible fixed-size form.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.0);
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&block.into());
        mac.update(&canonical);
        format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_every_part_and_not_with_key_order() {
        let k = DigestKey::from_bytes([7; 32]);
        let a = k.action_digest("acme", "agt_1", "pay", &json!({"a": 1, "b": 2}), None);
        assert_eq!(
            a,
            k.action_digest("acme", "agt_1", "pay", &json!({"b": 2, "a": 1}), None)
        );
        assert_ne!(
            a,
            k.action_digest("acme2", "agt_1", "pay", &json!({"a": 1, "b": 2}), None)
        );
        assert_ne!(
            a,
            k.action_digest("acme", "agt_2", "pay", &json!({"a": 1, "b": 2}), None)
        );
        assert_ne!(
            a,
            k.action_digest("acme", "agt_1", "paz", &json!({"a": 1, "b": 2}), None)
        );
        assert_ne!(
            a,
            k.action_digest("acme", "agt_1", "pay", &json!({"a": 1, "b": 3}), None)
        );
        assert_ne!(
            a,
            k.action_digest("acme", "agt_1", "pay", &json!({"a": 1, "b": 2}), Some(&json!({})))
        );
        assert_ne!(
            a,
            DigestKey::from_bytes([8; 32]).action_digest(
                "acme",
                "agt_1",
                "pay",
                &json!({"a": 1, "b": 2}),
                None
            )
        );
        assert!(a.starts_with("hmac-sha256:") && a.len() == "hmac-sha256:".len() + 64);
        // The padded-key form equals the usual variable-length key form.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7; 32]).expect("key");
        mac.update(
            br#"{"action":"pay","agentId":"agt_1","context":{"a":1,"b":2},"tenant":"acme","tool":null}"#,
        );
        assert_eq!(
            a,
            format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn the_key_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().expect("dir");
        let p = DigestKey::path(dir.path());
        let a = DigestKey::load_or_create(&p).expect("create");
        let b = DigestKey::load_or_create(&p).expect("read");
        assert_eq!(a.0, b.0);
        std::fs::write(&p, "zz").expect("write");
        assert!(
            DigestKey::load_or_create(&p).is_err(),
            "a damaged key is refused, not replaced"
        );
    }
}
