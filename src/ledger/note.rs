//! C2SP `signed-note` and `tlog-checkpoint` with Ed25519 keys, compatible with
//! golang.org/x/mod/sumdb/note. Pure: no IO.
//!
//! Key id = first 4 bytes of SHA-256(name || "\n" || 0x01 || pubkey); the verifier key
//! string is `<name>+<hex key id>+<base64(0x01 || pubkey)>`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::LedgerError;
use super::tree::Hash;

const ALG_ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";

fn bad(msg: impl Into<String>) -> LedgerError {
    LedgerError::InvalidProof(msg.into())
}

fn valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', ' ', '\n']) && name.chars().all(|c| !c.is_control())
}

/// Key id of an Ed25519 key under `name`.
pub fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(key.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A parsed verifier key (`<name>+<hex id>+<base64(0x01||pubkey)>`).
#[derive(Clone, Debug)]
pub struct NoteVerifier {
    name: String,
    id: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    /// The verifier for `key` under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, LedgerError> {
        if !valid_key_name(name) {
            return Err(LedgerError::Config(format!("invalid key name {name:?}")));
        }
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, &key),
            key,
        })
    }

    /// Parses a verifier key string, checking that its key id matches name and key.
    pub fn parse(vkey: &str) -> Result<Self, LedgerError> {
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(key_b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("verifier key must be <name>+<hex id>+<base64 key>"));
        };
        if !valid_key_name(name) {
            return Err(bad("verifier key has an invalid name"));
        }
        let id: [u8; 4] = hex::decode(id_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .filter(|_| id_hex.len() == 8)
            .ok_or_else(|| bad("verifier key id must be 8 hex digits"))?;
        let raw = B64
            .decode(key_b64)
            .map_err(|_| bad("verifier key is not base64"))?;
        let (alg, pk) = raw.split_first().ok_or_else(|| bad("verifier key is empty"))?;
        if *alg != ALG_ED25519 {
            return Err(bad("verifier key is not an Ed25519 key"));
        }
        let pk: [u8; 32] = pk
            .try_into()
            .map_err(|_| bad("Ed25519 public key must be 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&pk).map_err(|_| bad("invalid Ed25519 public key"))?;
        if key_id(name, &key) != id {
            return Err(bad("verifier key id does not match its name and key"));
        }
        Ok(Self {
            name: name.to_owned(),
            id,
            key,
        })
    }

    /// Key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.id
    }

    /// The verifier key string.
    pub fn to_vkey(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(self.id), B64.encode(raw))
    }

    /// Verifies a signed note and returns its body (including the final newline).
    /// Requires a valid signature by this key; signatures by other keys are ignored.
    pub fn verify_note<'a>(&self, text: &'a str) -> Result<&'a str, LedgerError> {
        let split = text
            .rfind("\n\n")
            .ok_or_else(|| bad("note has no signature block"))?;
        let (body, sigs) = (&text[..=split], &text[split + 2..]);
        if sigs.is_empty() || !sigs.ends_with('\n') {
            return Err(bad("note signature block is malformed"));
        }
        let mut verified = false;
        for line in sigs[..sigs.len() - 1].split('\n') {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("note signature line must start with an em dash"))?;
            let (name, sig_b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("note signature line is malformed"))?;
            let sig = B64
                .decode(sig_b64)
                .map_err(|_| bad("note signature is not base64"))?;
            if sig.len() < 5 {
                return Err(bad("note signature is too short"));
            }
            if name != self.name || sig[..4] != self.id {
                continue;
            }
            let sig =
                Signature::from_slice(&sig[4..]).map_err(|_| bad("note signature has the wrong length"))?;
            self.key
                .verify(body.as_bytes(), &sig)
                .map_err(|_| bad("note signature does not verify"))?;
            verified = true;
        }
        if !verified {
            return Err(bad(format!(
                "note carries no signature by key {}+{}",
                self.name,
                hex::encode(self.id)
            )));
        }
        Ok(body)
    }
}

/// Signs notes with the ledger's Ed25519 key.
pub(crate) struct NoteSigner {
    key: SigningKey,
    verifier: NoteVerifier,
}

impl NoteSigner {
    pub(crate) fn new(name: &str, key: SigningKey) -> Result<Self, LedgerError> {
        let verifier = NoteVerifier::new(name, key.verifying_key())?;
        Ok(Self { key, verifier })
    }

    pub(crate) fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// Signs `body` (which must end in a newline) into a signed note.
    pub(crate) fn sign(&self, body: &str) -> String {
        let sig = self.key.sign(body.as_bytes());
        let mut raw = self.verifier.id.to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{body}\n{SIG_PREFIX}{} {}\n", self.verifier.name, B64.encode(raw))
    }

    /// Signs a checkpoint for `(size, root)` under `origin`.
    pub(crate) fn checkpoint(&self, origin: &str, size: u64, root: Hash) -> SignedCheckpoint {
        let body = format!("{origin}\n{size}\n{}\n", B64.encode(root));
        SignedCheckpoint {
            origin: origin.to_owned(),
            size,
            root,
            text: self.sign(&body),
        }
    }
}

/// A signed `tlog-checkpoint` note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// Log origin line.
    pub origin: String,
    /// Tree size committed to.
    pub size: u64,
    /// Root hash at `size`.
    pub root: Hash,
    text: String,
}

impl SignedCheckpoint {
    /// The full signed note text (what `GET /v1/ledger/checkpoint` serves).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Parses a signed checkpoint and verifies its signature with `verifier`.
    pub fn parse_verified(text: &str, verifier: &NoteVerifier) -> Result<Self, LedgerError> {
        let body = verifier.verify_note(text)?;
        let mut lines = body[..body.len() - 1].split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("checkpoint has no origin"))?;
        let size_s = lines.next().ok_or_else(|| bad("checkpoint has no tree size"))?;
        if size_s.is_empty()
            || !size_s.bytes().all(|b| b.is_ascii_digit())
            || (size_s.len() > 1 && size_s.starts_with('0'))
        {
            return Err(bad("checkpoint tree size is not a canonical decimal"));
        }
        let size: u64 = size_s
            .parse()
            .map_err(|_| bad("checkpoint tree size is out of range"))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("checkpoint root is not a base64 SHA-256 hash"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            text: text.to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner::new("kla.local/ledger", SigningKey::from_bytes(&[7u8; 32])).expect("signer")
    }

    #[test]
    fn checkpoint_format_and_roundtrip() {
        let s = signer();
        let cp = s.checkpoint("kla.local/ledger", 5, [1u8; 32]);
        let (body, sig) = cp.text().split_once("\n\n").expect("blank line");
        assert_eq!(
            body,
            "kla.local/ledger\n5\nAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="
        );
        assert!(sig.starts_with("\u{2014} kla.local/ledger "));
        let vkey = s.verifier().to_vkey();
        let v = NoteVerifier::parse(&vkey).expect("vkey parses");
        assert_eq!(v.to_vkey(), vkey);
        let back = SignedCheckpoint::parse_verified(cp.text(), &v).expect("verifies");
        assert_eq!(back, cp);
    }

    #[test]
    fn signature_verifies_with_ring() {
        let s = signer();
        let cp = s.checkpoint("kla.local/ledger", 42, [9u8; 32]);
        let (body, sigline) = cp.text().split_once("\n\n").expect("split");
        let b64 = sigline.trim_end().rsplit_once(' ').expect("sig field").1;
        let raw = B64.decode(b64).expect("b64");
        assert_eq!(raw[..4], s.verifier().key_id());
        let pk = s.key.verifying_key().to_bytes();
        let ring_key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk.as_slice());
        let signed = format!("{body}\n");
        ring_key
            .verify(signed.as_bytes(), &raw[4..])
            .expect("ring verifies the Ed25519 signature");
        let mut tampered = signed.into_bytes();
        tampered[0] ^= 1;
        assert!(ring_key.verify(&tampered, &raw[4..]).is_err());
    }

    #[test]
    fn key_id_matches_sumdb_definition() {
        let s = signer();
        let pk = s.key.verifying_key();
        let mut h = Sha256::new();
        h.update(b"kla.local/ledger\n\x01");
        h.update(pk.as_bytes());
        assert_eq!(s.verifier().key_id(), h.finalize()[..4]);
    }

    #[test]
    fn rejects_wrong_key_id_wrong_name_and_altered_body() {
        let s = signer();
        let cp = s.checkpoint("kla.local/ledger", 3, [2u8; 32]);
        let v = s.verifier().clone();
        // altered body
        let altered = cp.text().replacen("\n3\n", "\n4\n", 1);
        assert!(SignedCheckpoint::parse_verified(&altered, &v).is_err());
        // a verifier with a different name (hence key id) finds no signature
        let other = NoteVerifier::new("other.example/log", s.key.verifying_key()).expect("v");
        assert!(SignedCheckpoint::parse_verified(cp.text(), &other).is_err());
        // a different key under the same name
        let k2 = NoteSigner::new("kla.local/ledger", SigningKey::from_bytes(&[8u8; 32])).expect("signer");
        assert!(SignedCheckpoint::parse_verified(cp.text(), k2.verifier()).is_err());
        // a vkey whose id does not match
        let vkey = v.to_vkey();
        let mut parts: Vec<&str> = vkey.split('+').collect();
        parts[1] = "00000000";
        assert!(NoteVerifier::parse(&parts.join("+")).is_err());
        // missing em dash
        let plain = cp.text().replace('\u{2014}', "-");
        assert!(SignedCheckpoint::parse_verified(&plain, &v).is_err());
    }
}
