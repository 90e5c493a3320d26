//! Ed25519 signing of packs: key files, the signed manifest (`pack.sig.json`) and
//! [`VerifiedPack`], the proof that a pack's bytes were checked against a trusted key.

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PolicyError;
use super::pack::{PackFiles, SIGNATURE_FILE};

/// Prefix of the one-line public key format: `kla-ed25519:<base64 of the 32 key bytes>`.
pub const PUBLIC_KEY_PREFIX: &str = "kla-ed25519:";
/// Value of `manifest.format` in `pack.sig.json`.
pub const MANIFEST_FORMAT: &str = "kla.dev/pack-manifest/v1";
/// Domain-separation prefix prepended to the canonical manifest before signing.
const SIGNING_CONTEXT: &[u8] = b"kla pack manifest v1\n";

/// A public key trusted to sign packs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    key: VerifyingKey,
    id: String,
}

impl TrustedKey {
    /// Parses the one-line text format `kla-ed25519:<base64>`; blank lines and `#` comments
    /// around it are ignored.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let bad = |reason: &str| PolicyError::Key {
            path: "<public key>".into(),
            reason: reason.into(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| bad("no key line found"))?;
        let b64 = line
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| bad("public key must start with `kla-ed25519:`"))?;
        let bytes = B64
            .decode(b64.trim())
            .map_err(|_| bad("public key is not valid base64"))?;
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| bad("public key must be 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&arr).map_err(|_| bad("not an Ed25519 point"))?;
        Ok(Self::from_verifying_key(key))
    }

    /// Reads and parses a public key file.
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        Self::parse(&text).map_err(|e| match e {
            PolicyError::Key { reason, .. } => PolicyError::Key {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    fn from_verifying_key(key: VerifyingKey) -> Self {
        let id = hex::encode(&Sha256::digest(key.as_bytes())[..8]);
        TrustedKey { key, id }
    }

    /// Key id: first 16 hex digits of SHA-256 over the raw public key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The one-line text form (`kla-ed25519:<base64>`).
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_KEY_PREFIX}{}", B64.encode(self.key.as_bytes()))
    }
}

/// A private signing key (PKCS#8 PEM on disk).
pub struct PackSigner {
    key: SigningKey,
}

impl std::fmt::Debug for PackSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackSigner")
            .field("key_id", &self.public().id)
            .finish()
    }
}

impl PackSigner {
    /// Generates a fresh key pair from the OS random source.
    pub fn generate() -> Self {
        PackSigner {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn read(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| PolicyError::Key {
            path: path.display().to_string(),
            reason: format!("not a PKCS#8 PEM Ed25519 private key: {e}"),
        })?;
        Ok(PackSigner { key })
    }

    /// Writes the private key (PKCS#8 PEM, mode 0600, refuses to overwrite) and the public key
    /// (one-line text).
    pub fn write(&self, private: &Path, public: &Path) -> Result<(), PolicyError> {
        use std::io::Write;
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| PolicyError::Key {
                path: private.display().to_string(),
                reason: format!("cannot encode private key: {e}"),
            })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(private).map_err(|e| PolicyError::io(private, e))?;
        f.write_all(pem.as_bytes())
            .map_err(|e| PolicyError::io(private, e))?;
        let text = format!(
            "# kla pack signing public key, id {}\n{}\n",
            self.public().id(),
            self.public().to_text()
        );
        std::fs::write(public, text).map_err(|e| PolicyError::io(public, e))
    }

    /// The matching public key.
    pub fn public(&self) -> TrustedKey {
        TrustedKey::from_verifying_key(self.key.verifying_key())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileEntry {
    path: String,
    sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Manifest {
    format: String,
    name: String,
    version: String,
    key_id: String,
    files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SignatureDoc {
    manifest: Manifest,
    /// Base64 Ed25519 signature over `SIGNING_CONTEXT || JCS(manifest)`.
    signature: String,
}

fn file_entries(files: &PackFiles) -> Vec<FileEntry> {
    files
        .files
        .iter()
        .map(|(path, bytes)| FileEntry {
            path: path.clone(),
            sha256: hex::encode(Sha256::digest(bytes)),
        })
        .collect()
}

fn canonical(manifest: &Manifest) -> Result<Vec<u8>, PolicyError> {
    serde_json_canonicalizer::to_vec(manifest).map_err(|e| PolicyError::Signature {
        pack: manifest.name.clone(),
        reason: format!("cannot encode manifest: {e}"),
    })
}

/// A pack whose bytes were checked against a trusted key (or explicitly accepted unsigned).
/// The only way to obtain one is [`verify_pack`] or [`VerifiedPack::accept_unsigned`].
#[derive(Debug, Clone)]
pub struct VerifiedPack {
    pub(crate) files: PackFiles,
    /// Name and version the signer attested (None when unsigned).
    pub(crate) signed_header: Option<(String, String)>,
    pub(crate) digest: String,
    pub(crate) signer_key_id: Option<String>,
}

impl VerifiedPack {
    /// Accepts a pack without a signature. For local development only: logs a warning.
    pub fn accept_unsigned(files: PackFiles) -> Self {
        tracing::warn!(
            pack = %files.root().display(),
            "loading policy pack WITHOUT signature verification (allow_unsigned is for local development only)"
        );
        let manifest = Manifest {
            format: MANIFEST_FORMAT.into(),
            name: String::new(),
            version: String::new(),
            key_id: String::new(),
            files: file_entries(&files),
        };
        let digest = serde_json_canonicalizer::to_vec(&manifest)
            .map(|b| hex::encode(Sha256::digest(b)))
            .unwrap_or_default();
        VerifiedPack {
            files,
            signed_header: None,
            digest,
            signer_key_id: None,
        }
    }

    /// Hex SHA-256 over the canonical signed manifest.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Id of the key that signed the pack (None when accepted unsigned).
    pub fn signer_key_id(&self) -> Option<&str> {
        self.signer_key_id.as_deref()
    }

    /// The directory the pack was read from.
    pub fn root(&self) -> &Path {
        self.files.root()
    }
}

/// Whether `files` carries a signature file at all.
pub fn is_signed(files: &PackFiles) -> bool {
    files.signature.is_some()
}

/// Checks the signature file against `trusted` keys and the file list against the manifest.
pub fn verify_pack(files: PackFiles, trusted: &[TrustedKey]) -> Result<VerifiedPack, PolicyError> {
    let pack = files.root().display().to_string();
    let fail = |reason: String| PolicyError::Signature {
        pack: pack.clone(),
        reason,
    };
    let Some(sig_bytes) = files.signature.as_deref() else {
        return Err(fail(format!(
            "pack is unsigned (no {SIGNATURE_FILE}); sign it with `kla pack sign`"
        )));
    };
    let doc: SignatureDoc =
        serde_json::from_slice(sig_bytes).map_err(|e| fail(format!("{SIGNATURE_FILE} is malformed: {e}")))?;
    if doc.manifest.format != MANIFEST_FORMAT {
        return Err(fail(format!(
            "unsupported manifest format {:?}",
            doc.manifest.format
        )));
    }
    let key = trusted
        .iter()
        .find(|k| k.id == doc.manifest.key_id)
        .ok_or_else(|| {
            fail(format!(
                "signed by key {} which is not trusted (trusted: {})",
                doc.manifest.key_id,
                trusted
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let sig_raw = B64
        .decode(doc.signature.trim())
        .map_err(|_| fail("signature is not valid base64".into()))?;
    let signature = Signature::from_slice(&sig_raw).map_err(|_| fail("signature is not 64 bytes".into()))?;
    let body = canonical(&doc.manifest)?;
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&body);
    key.key
        .verify_strict(&msg, &signature)
        .map_err(|_| fail(format!("signature does not verify with key {}", key.id)))?;

    // The manifest is authentic; now compare it with what is on disk.
    let actual = file_entries(&files);
    let signed: BTreeSet<&str> = doc.manifest.files.iter().map(|f| f.path.as_str()).collect();
    let mut problems = Vec::new();
    for entry in &doc.manifest.files {
        match actual.iter().find(|a| a.path == entry.path) {
            None => problems.push(format!("file {} was removed after signing", entry.path)),
            Some(a) if a.sha256 != entry.sha256 => {
                problems.push(format!("file {} was changed after signing", entry.path))
            }
            Some(_) => {}
        }
    }
    for a in &actual {
        if !signed.contains(a.path.as_str()) {
            problems.push(format!(
                "file {} was added after signing (not in the manifest)",
                a.path
            ));
        }
    }
    if !problems.is_empty() {
        return Err(fail(problems.join("; ")));
    }
    Ok(VerifiedPack {
        digest: hex::encode(Sha256::digest(&body)),
        signer_key_id: Some(key.id.clone()),
        signed_header: Some((doc.manifest.name, doc.manifest.version)),
        files,
    })
}

/// Signs the pack in `files` (whose name and version come from its `pack.yaml`) and returns the
/// content of `pack.sig.json`. The caller writes it (see [`sign_pack_dir`]).
pub fn sign_files(
    files: &PackFiles,
    name: &str,
    version: &str,
    signer: &PackSigner,
) -> Result<Vec<u8>, PolicyError> {
    let manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        name: name.into(),
        version: version.into(),
        key_id: signer.public().id,
        files: file_entries(files),
    };
    let body = canonical(&manifest)?;
    let mut msg = SIGNING_CONTEXT.to_vec();
    msg.extend_from_slice(&body);
    let signature = signer.key.sign(&msg);
    let doc = SignatureDoc {
        manifest,
        signature: B64.encode(signature.to_bytes()),
    };
    let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| PolicyError::Signature {
        pack: name.into(),
        reason: format!("cannot encode signature file: {e}"),
    })?;
    out.push(b'\n');
    Ok(out)
}

/// Validates the pack in `dir` (it must parse and compile), signs it and writes
/// `dir/pack.sig.json`. Returns the digest of the signed manifest.
pub fn sign_pack_dir(dir: &Path, signer: &PackSigner) -> Result<String, PolicyError> {
    let files = PackFiles::read_dir(dir)?;
    let unverified = VerifiedPack {
        files: files.clone(),
        signed_header: None,
        digest: String::new(),
        signer_key_id: None,
    };
    let compiled = super::engine::CompiledPack::compile(&unverified)?;
    let out = sign_files(&files, compiled.name(), compiled.version(), signer)?;
    let path = dir.join(SIGNATURE_FILE);
    std::fs::write(&path, &out).map_err(|e| PolicyError::io(&path, e))?;
    let files = PackFiles::read_dir(dir)?;
    let verified = verify_pack(files, &[signer.public()])?;
    Ok(verified.digest)
}
