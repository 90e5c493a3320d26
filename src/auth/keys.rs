//! Ed25519 key files in the data dir: created on first use (mode 0600), PKCS#8 PEM.

use super::AuthError;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use std::path::Path;

/// A loaded key with its PEM encodings.
pub struct KeyFile {
    /// The signing key.
    pub signing: SigningKey,
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
    /// SPKI PEM of the public key.
    pub public_pem: String,
}

impl KeyFile {
    /// A short id for the public key: `ed25519:` + first 8 bytes of SHA-256(public key), hex.
    pub fn key_id(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.signing.verifying_key().as_bytes());
        format!("ed25519:{}", hex::encode(&d[..8]))
    }
}

/// Loads the key at `path`, or creates it (and its directory) if absent.
pub fn load_or_create(path: &Path) -> Result<KeyFile, AuthError> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AuthError::Key(format!("{}: {e}", dir.display())))?;
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AuthError::Key(e.to_string()))?;
        write_private(path, pem.as_bytes())?;
        tracing::info!(path = %path.display(), "created signing key");
    }
    load(path)
}

/// Loads an existing key.
pub fn load(path: &Path) -> Result<KeyFile, AuthError> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
    let signing =
        SigningKey::from_pkcs8_pem(&pem).map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
    let public_pem = signing
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| AuthError::Key(e.to_string()))?;
    Ok(KeyFile {
        signing,
        private_pem: pem,
        public_pem,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))
}

/// Path of the token signing key in a data dir.
pub fn token_key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("keys").join("token-signing.pem")
}

/// Path of the agent-manifest signing key in a data dir.
pub fn registry_key_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("keys").join("registry-signing.pem")
}
