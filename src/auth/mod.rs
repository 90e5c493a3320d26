//! Who is calling: bearer-token verification, roles and tenancy, and minting kla's own tokens.
//!
//! kla's own tokens are EdDSA (Ed25519) JWTs signed with a key created in the data dir on first start
//! (`keys/token-signing.pem`); `kla token` mints them with the same key. Tokens from an external OAuth issuer are
//! verified against a JWKS file (RS256, ES256, EdDSA) with the configured issuer and audience. `alg: none`, HMAC,
//! expired tokens, tokens not valid yet (`nbf` in the future), wrong signatures and tokens whose header or claims
//! repeat a key are refused, each with a message in the caller's terms. Verified tokens are cached until they
//! expire, because an Ed25519 verification costs more than the rest of a policy decision.
//! This module knows nothing of HTTP routing or storage; `api::auth` adapts it to requests.
//!
//! Every role but one acts inside the tenants its token lists. [`Role::Operator`] belongs to no tenant: its token
//! lists none, only kla's own key issues it ([`mint_operator`], `kla token --operator`), and it names the reserved
//! pseudo-tenant [`OPERATOR_TENANT`] in requests (which holds no data), so it may read the whole ledger for
//! monitoring without being a member of any tenant.
//!
//! The Decision Desk's tokens are kla tokens with a `desk` claim ([`DeskUse`]), minted only with kla's own key: a
//! one-time sign-in link ([`mint_desk_link`], `kla token --desk`), which is never a credential itself and is
//! checked only by [`Authenticator::verify_desk_link`], and the session it is exchanged for
//! ([`mint_desk_session`]), which the API accepts only as the Desk's cookie.

mod caller;
pub mod keys;

pub use caller::Caller;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Issuer and audience of kla's own tokens.
pub const LOCAL_ISSUER: &str = "kla";
/// Audience of kla's own tokens.
pub const LOCAL_AUDIENCE: &str = "kla";
const CACHE_MAX: usize = 16_384;
/// What an operator token names as its tenant (`x-tenant-id`): reserved (a leading `_`), so no tenant can be
/// called this and no token of a tenant role can list it.
pub const OPERATOR_TENANT: &str = "_operator";

/// Errors of token handling. Verification failures are the caller's fault (401); key problems are ours.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is malformed, expired, wrongly signed or uses a refused algorithm; the message says which, in
    /// the caller's terms (the parser's own words are logged at debug).
    #[error("{0}")]
    InvalidToken(String),
    /// A valid token without the permission for this tenant, role or agent.
    #[error("{0}")]
    Forbidden(String),
    /// A key file could not be read, parsed or written.
    #[error("key error: {0}")]
    Key(String),
}

impl crate::error::Classify for AuthError {
    fn class(&self) -> crate::error::Class {
        use crate::error::Class;
        match self {
            AuthError::InvalidToken(_) => Class::Unauthenticated,
            AuthError::Forbidden(_) => Class::Forbidden,
            AuthError::Key(_) => Class::Internal,
        }
    }
}

/// What a token lets its holder do. Ordered by nothing: check with the `can_*` helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// An agent: registers itself, asks for decisions.
    Agent,
    /// A person who resolves approvals.
    Approver,
    /// Operates kla: everything.
    Admin,
    /// Reads decisions, the ledger and evidence.
    Auditor,
    /// Monitors the ledger for the whole deployment: belongs to no tenant and reads only the ledger's
    /// monitor-facing routes. Never accepted from `--role` (a `kla token --operator` token only).
    #[value(skip)]
    Operator,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
        }
    }
}

/// What a Decision Desk token is for (its `desk` claim). API tokens have no such claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeskUse {
    /// A one-time sign-in link (`kla token --desk`): exchanged once for a session, never a credential itself.
    Link,
    /// A Desk session: accepted only as the Desk's `HttpOnly` cookie, never as a bearer token.
    Session,
}

/// Roles a Desk sign-in link may carry: the people who resolve approvals.
pub const DESK_ROLES: [Role; 2] = [Role::Approver, Role::Admin];

/// The claims of kla's own tokens, as [`mint`] writes them (verification reads them field by field).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject (who).
    pub sub: String,
    /// Audience: one string (kla's tokens) or a list (RFC 7519 allows both; the validator checks it).
    pub aud: Audience,
    /// Tenants the token may act in.
    pub tenants: Vec<String>,
    /// Role.
    pub role: Role,
    /// Expiry (unix seconds).
    pub exp: u64,
    /// Issued at (unix seconds); optional in external tokens.
    #[serde(default)]
    pub iat: u64,
    /// The one agent (its name or id) an `agent` token acts for; absent: any agent of its tenants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// What kla signs: the [`Claims`], plus for a Decision Desk token what it is for and (links) its id.
#[derive(Serialize)]
struct SignedClaims {
    #[serde(flatten)]
    claims: Claims,
    #[serde(skip_serializing_if = "Option::is_none")]
    desk: Option<DeskUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
}

/// The `aud` claim.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// A single audience.
    One(String),
    /// Several audiences.
    Many(Vec<String>),
}

/// A verified caller identity.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Issuer of the token (`iss`): kla itself or the external issuer.
    pub issuer: Arc<str>,
    /// Subject of the token.
    pub subject: Arc<str>,
    /// Role of the token.
    pub role: Role,
    /// Tenants the token may act in.
    pub tenants: Arc<[String]>,
    /// Expiry (unix seconds).
    pub exp: u64,
    /// The agent (name or id) this token is bound to, if any (the `agent` claim).
    pub agent: Option<Arc<str>>,
    /// A Decision Desk session (the `desk` claim; links never become a `Principal`): the API accepts it only as
    /// the Desk's cookie.
    pub desk_session: bool,
}

impl Principal {
    /// Whether the token may act in `tenant`: an operator only in [`OPERATOR_TENANT`], every other role only in a
    /// tenant its token lists and never in a reserved one (a leading `_`), even if an external issuer lists it.
    pub fn allows_tenant(&self, tenant: &str) -> bool {
        match self.role {
            Role::Operator => tenant == OPERATOR_TENANT,
            _ => !tenant.starts_with('_') && self.tenants.iter().any(|t| t == tenant),
        }
    }

    /// Whether the token may act as the agent with this id (`None` before it is registered) and name: tokens
    /// without an `agent` claim may act as any agent of their tenants, bound tokens only as theirs (matched by
    /// name or id; names ignore case, as `crate::names` defines them).
    pub fn may_act_as(&self, agent_id: Option<&str>, agent_name: &str) -> bool {
        self.agent
            .as_deref()
            .is_none_or(|a| Some(a) == agent_id || a.eq_ignore_ascii_case(agent_name))
    }
}

/// Whether `t` is a well-formed tenant name: 1-128 visible ASCII characters. (Names starting with `_` are
/// well-formed but reserved for kla's own entries; callers refuse them separately.)
pub fn tenant_name_ok(t: &str) -> bool {
    !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic())
}

/// External OAuth issuer settings.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    /// The JWKS document.
    pub jwks: JwkSet,
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
}

impl ExternalIssuer {
    /// Loads a JWKS file.
    pub fn load(path: &Path, issuer: String, audience: String) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AuthError::Key(format!("reading JWKS {}: {e}", path.display())))?;
        let jwks: JwkSet = crate::json::from_slice_unique(text.as_bytes())
            .map_err(|e| AuthError::Key(format!("parsing JWKS {}: {e}", path.display())))?;
        Ok(ExternalIssuer {
            jwks,
            issuer,
            audience,
        })
    }
}

/// Verifies bearer tokens. Cheap to share behind an `Arc`.
pub struct Authenticator {
    local: DecodingKey,
    external: Option<ExternalIssuer>,
    cache: RwLock<HashMap<Box<str>, Principal>>,
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Authenticator {
    /// An authenticator for kla's own tokens (verified with `local_public_pem`) and, optionally, an external issuer.
    pub fn new(local_public_pem: &[u8], external: Option<ExternalIssuer>) -> Result<Self, AuthError> {
        let local = DecodingKey::from_ed_pem(local_public_pem).map_err(|e| AuthError::Key(e.to_string()))?;
        Ok(Authenticator {
            local,
            external,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// Verifies `token` and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = now_secs();
        if let Some(p) = self.cache.read().get(token)
            && p.exp > now
        {
            return Ok(p.clone());
        }
        let (p, desk) = self.verify_uncached(token)?;
        if desk.is_some_and(|d| d.kind == DeskUse::Link) {
            return Err(refused(
                "this is a Decision Desk sign-in link, not an API token: open the link in a browser",
                "desk link used as a token",
            ));
        }
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, p| p.exp > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.into(), p.clone());
        Ok(p)
    }

    /// Verifies a Desk sign-in link's code (`kla token --desk`). Not cached: each link is used once, and its
    /// single use (by [`DeskLink::jti`]) is the caller's to record.
    pub fn verify_desk_link(&self, code: &str) -> Result<DeskLink, AuthError> {
        let (principal, desk) = self.verify_uncached(code)?;
        match desk {
            Some(DeskClaims {
                kind: DeskUse::Link,
                jti: Some(jti),
            }) => Ok(DeskLink { principal, jti }),
            Some(DeskClaims {
                kind: DeskUse::Link,
                jti: None,
            }) => Err(refused(
                "the sign-in link lacks claim 'jti'",
                "desk link without jti",
            )),
            _ => Err(refused(
                "this is not a Decision Desk sign-in link (mint one with kla token --desk)",
                "not a desk link",
            )),
        }
    }

    fn verify_uncached(&self, token: &str) -> Result<(Principal, Option<DeskClaims>), AuthError> {
        let (header, payload) = split_token(token)?;
        let external = self.external.as_ref();
        let accepted = if external.is_some() {
            "EdDSA, RS256 or ES256"
        } else {
            "EdDSA"
        };
        // `alg` is matched as a string before jsonwebtoken sees it: `none`, HMAC and every other name are refused
        // here, in words, rather than by a parser error that lists jsonwebtoken's algorithms.
        let alg = match (header.alg.as_deref(), external) {
            (Some("EdDSA"), _) => Algorithm::EdDSA,
            (Some("RS256"), Some(_)) => Algorithm::RS256,
            (Some("ES256"), Some(_)) => Algorithm::ES256,
            (alg, _) => {
                return Err(refused(
                    format!("the token's algorithm is not accepted (use {accepted})"),
                    format_args!("alg {alg:?}"),
                ));
            }
        };
        let external_key;
        let (key, issuer, audience) = match (header.kid.as_deref(), external) {
            (None, _) if alg == Algorithm::EdDSA => (&self.local, LOCAL_ISSUER, LOCAL_AUDIENCE),
            (None, _) => {
                return Err(refused(
                    "the token lacks a key id ('kid' header), which tokens of the external issuer need",
                    format_args!("alg {alg:?} without kid"),
                ));
            }
            (Some(kid), None) => {
                return Err(refused(
                    "the token names a key id ('kid' header), but kla trusts no external issuer",
                    format_args!("kid {kid:?}"),
                ));
            }
            (Some(kid), Some(ext)) => {
                let jwk = ext.jwks.find(kid).ok_or_else(|| {
                    refused(
                        "the token's key id ('kid' header) is not one of the external issuer's keys",
                        format_args!("kid {kid:?}"),
                    )
                })?;
                external_key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    refused(
                        "the token's key id names a key kla cannot use",
                        format_args!("kid {kid:?}: {e}"),
                    )
                })?;
                (&external_key, ext.issuer.as_str(), ext.audience.as_str())
            }
        };
        let mut v = Validation::new(alg);
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // jsonwebtoken checks the signature, times, issuer and audience; kla reads the claims itself, so that a
        // missing or mistyped claim is named in words.
        decode::<serde::de::IgnoredAny>(token, key, &v).map_err(|e| refused(jwt_reason(&e, &payload), e))?;
        // Only a token without `kid` is checked against kla's own key and issuer.
        read_claims(&payload, header.kid.is_none())
    }
}

/// A refused token: `reason` is what the caller is told, `detail` (the parser's own words) is logged at debug.
fn refused(reason: impl Into<String>, detail: impl std::fmt::Display) -> AuthError {
    let reason = reason.into();
    tracing::debug!(%reason, %detail, "bearer token refused");
    AuthError::InvalidToken(reason)
}

const MALFORMED: &str = "the bearer token is not a well-formed JWT";

/// The header fields kla reads before choosing a key.
#[derive(Deserialize)]
struct TokenHeader {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// Splits a compact JWS into its decoded header and payload, refusing anything that is not three base64url parts
/// with a JSON object header and payload in which no object repeats a key (RFC 7515 section 4 and RFC 7519 section
/// 4: a repeated header parameter or claim is refused, not resolved to its last occurrence).
fn split_token(token: &str) -> Result<(TokenHeader, Vec<u8>), AuthError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(refused(MALFORMED, "not three dot-separated parts"));
    };
    let decode = |part: &str, what: &str| {
        b64.decode(part)
            .map_err(|e| refused(MALFORMED, format_args!("{what} is not base64url: {e}")))
    };
    let header = decode(h, "header")?;
    let payload = decode(p, "payload")?;
    decode(sig, "signature")?;
    let unique = |bytes: &[u8], what: &str| {
        crate::json::check_unique_keys(bytes).map_err(|e| match e {
            crate::json::CheckError::Duplicate(d) => {
                refused(format!("{MALFORMED}: its {what} have a {d}"), "repeated key")
            }
            other => refused(MALFORMED, format_args!("{what}: {other}")),
        })
    };
    unique(&header, "header parameters")?;
    unique(&payload, "claims")?;
    let header: TokenHeader =
        serde_json::from_slice(&header).map_err(|e| refused(MALFORMED, format_args!("header: {e}")))?;
    Ok((header, payload))
}

/// Whether the claims name `claim` (with any value but null).
fn has_claim(payload: &[u8], claim: &str) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
        .is_ok_and(|m| m.get(claim).is_some_and(|v| !v.is_null()))
}

/// The claims of a verified token. Every field is optional here so that a missing one is named by kla, not by
/// serde.
#[derive(Deserialize)]
struct ClaimsIn {
    iss: Option<String>,
    sub: Option<String>,
    tenants: Option<Vec<String>>,
    role: Option<Role>,
    exp: Option<u64>,
    agent: Option<String>,
    desk: Option<DeskUse>,
    jti: Option<String>,
    /// Not used, but a token that has one must have a number there.
    #[serde(rename = "iat")]
    _iat: Option<u64>,
}

/// A verified Desk sign-in link.
#[derive(Debug, Clone)]
pub struct DeskLink {
    /// Who the link signs in: its one tenant, subject and role.
    pub principal: Principal,
    /// The link's id: the store records its one use.
    pub jti: String,
}

/// The Desk claims of a verified token.
struct DeskClaims {
    kind: DeskUse,
    jti: Option<String>,
}

fn read_claims(payload: &[u8], local: bool) -> Result<(Principal, Option<DeskClaims>), AuthError> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let c: ClaimsIn = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let claim = match e.path().iter().next() {
            Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
            _ => None,
        };
        let reason = match claim.as_deref() {
            Some("role") => {
                "the token's claim 'role' must be one of agent, approver, admin, auditor, operator".to_owned()
            }
            Some("desk") => "the token's claim 'desk' must be one of link, session".to_owned(),
            Some(c) => format!("the token's claim '{}' has the wrong type", c.escape_debug()),
            None => MALFORMED.to_owned(),
        };
        refused(reason, e)
    })?;
    let lacks = |claim: &str| refused(format!("the token lacks claim '{claim}'"), "missing claim");
    let tenants = c.tenants.ok_or_else(|| lacks("tenants"))?;
    let role = c.role.ok_or_else(|| lacks("role"))?;
    match role {
        Role::Operator if !local => {
            return Err(refused(
                "the operator role is accepted only in kla's own tokens",
                "external operator token",
            ));
        }
        Role::Operator if !tenants.is_empty() || c.agent.is_some() => {
            return Err(refused(
                "an operator token belongs to no tenant and no agent: it lists neither",
                "operator token with tenants or agent",
            ));
        }
        Role::Operator => {}
        _ if tenants.is_empty() => {
            return Err(refused(
                "the token's claim 'tenants' lists no tenant",
                "empty tenants",
            ));
        }
        _ => {}
    }
    // Desk tokens come only from kla's own key, for one tenant and a role that resolves approvals.
    if let Some(kind) = c.desk {
        let reason = if !local {
            Some("Decision Desk tokens are accepted only from kla's own key")
        } else if tenants.len() != 1 || c.agent.is_some() {
            Some("a Decision Desk token lists exactly one tenant and no agent")
        } else if !DESK_ROLES.contains(&role) {
            Some("a Decision Desk token's role is approver or admin")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(refused(reason, format_args!("desk token {kind:?}")));
        }
    }
    let principal = Principal {
        issuer: c.iss.ok_or_else(|| lacks("iss"))?.into(),
        subject: c.sub.ok_or_else(|| lacks("sub"))?.into(),
        role,
        tenants: tenants.into(),
        exp: c.exp.ok_or_else(|| lacks("exp"))?,
        agent: c.agent.map(Into::into),
        desk_session: c.desk == Some(DeskUse::Session),
    };
    Ok((principal, c.desk.map(|kind| DeskClaims { kind, jti: c.jti })))
}

/// What a jsonwebtoken refusal means to the caller (`payload`: the decoded claims).
fn jwt_reason(e: &jsonwebtoken::errors::Error, payload: &[u8]) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        // jsonwebtoken reports a required claim of the wrong type as missing.
        K::MissingRequiredClaim(c) if has_claim(payload, c) => {
            format!("the token's claim '{c}' has the wrong type")
        }
        K::InvalidSignature => "the token's signature does not verify".into(),
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet".into(),
        K::InvalidAudience => "the token was issued for another audience".into(),
        K::InvalidIssuer => "the token was issued by an issuer kla does not trust".into(),
        K::MissingRequiredClaim(c) => format!("the token lacks claim '{c}'"),
        K::InvalidClaimFormat(c) => format!("the token's claim '{c}' has the wrong type"),
        K::InvalidAlgorithm
        | K::MissingAlgorithm
        | K::InvalidEcdsaKey
        | K::InvalidEddsaKey
        | K::InvalidRsaKey(_)
        | K::InvalidKeyFormat => "the token's algorithm does not match the key it names".into(),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => MALFORMED.into(),
        _ => "the token could not be verified".into(),
    }
}

/// Mints a kla token signed with the private key PEM. Refuses [`Role::Operator`], which [`mint_operator`] mints.
pub fn mint(
    private_pem: &[u8],
    tenants: Vec<String>,
    role: Role,
    subject: String,
    agent: Option<String>,
    ttl: std::time::Duration,
) -> Result<String, AuthError> {
    if role == Role::Operator {
        return Err(AuthError::Forbidden(
            "an operator token belongs to no tenant: mint it with mint_operator (kla token --operator)"
                .into(),
        ));
    }
    let grant = Grant {
        tenants,
        role,
        subject,
        agent,
        ttl,
        desk: None,
    };
    sign(private_pem, grant)
}

/// Mints an operator token: role `operator`, no tenants, no agent (see the module docs).
pub fn mint_operator(
    private_pem: &[u8],
    subject: String,
    ttl: std::time::Duration,
) -> Result<String, AuthError> {
    let grant = Grant {
        tenants: Vec::new(),
        role: Role::Operator,
        subject,
        agent: None,
        ttl,
        desk: None,
    };
    sign(private_pem, grant)
}

/// Mints a Decision Desk sign-in link's code for `subject` acting as `role` (approver or admin) in `tenant`: a
/// token with `desk: link` and a random `jti`, exchanged once at `POST /desk/session` for a session.
pub fn mint_desk_link(
    private_pem: &[u8],
    tenant: String,
    role: Role,
    subject: String,
    ttl: std::time::Duration,
) -> Result<String, AuthError> {
    let jti = format!("dl_{}", hex::encode(rand::random::<[u8; 16]>()));
    mint_desk(private_pem, tenant, role, subject, ttl, DeskUse::Link, Some(jti))
}

/// Mints a Decision Desk session for the person a verified sign-in link names (`desk: session`).
pub fn mint_desk_session(
    private_pem: &[u8],
    link: &DeskLink,
    ttl: std::time::Duration,
) -> Result<String, AuthError> {
    let p = &link.principal;
    let tenant =
        p.tenants.first().cloned().ok_or_else(|| {
            AuthError::Forbidden("a Decision Desk session is for exactly one tenant".into())
        })?;
    mint_desk(
        private_pem,
        tenant,
        p.role,
        p.subject.to_string(),
        ttl,
        DeskUse::Session,
        None,
    )
}

fn mint_desk(
    private_pem: &[u8],
    tenant: String,
    role: Role,
    subject: String,
    ttl: std::time::Duration,
    desk: DeskUse,
    jti: Option<String>,
) -> Result<String, AuthError> {
    if !DESK_ROLES.contains(&role) {
        return Err(AuthError::Forbidden(format!(
            "a Decision Desk sign-in is for the roles approver and admin, not '{}'",
            role.as_str()
        )));
    }
    if !tenant_name_ok(&tenant) || tenant.starts_with('_') {
        return Err(AuthError::Forbidden(format!(
            "tenant {tenant:?} is not allowed for a Decision Desk sign-in"
        )));
    }
    let grant = Grant {
        tenants: vec![tenant],
        role,
        subject,
        agent: None,
        ttl,
        desk: Some((desk, jti)),
    };
    sign(private_pem, grant)
}

/// What a token minted by kla grants, checked by the `mint` function that builds it.
struct Grant {
    tenants: Vec<String>,
    role: Role,
    subject: String,
    agent: Option<String>,
    ttl: std::time::Duration,
    /// A Decision Desk token's use and, for a sign-in link, its single-use id.
    desk: Option<(DeskUse, Option<String>)>,
}

fn sign(private_pem: &[u8], grant: Grant) -> Result<String, AuthError> {
    let Grant {
        tenants,
        role,
        subject,
        agent,
        ttl,
        desk,
    } = grant;
    let (desk, jti) = desk.unzip();
    let key = EncodingKey::from_ed_pem(private_pem).map_err(|e| AuthError::Key(e.to_string()))?;
    let now = now_secs();
    let claims = Claims {
        iss: LOCAL_ISSUER.into(),
        sub: subject,
        aud: Audience::One(LOCAL_AUDIENCE.into()),
        tenants,
        role,
        exp: now + ttl.as_secs(),
        iat: now,
        agent,
    };
    let claims = SignedClaims {
        claims,
        desk,
        jti: jti.flatten(),
    };
    encode(&Header::new(Algorithm::EdDSA), &claims, &key).map_err(|e| AuthError::Key(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use base64::Engine;
    use std::time::Duration;

    /// An authenticator for a fresh local key and an external issuer (`https://idp.example`, key id `idp-1`),
    /// with the private PEMs of both.
    fn setup() -> (tempfile::TempDir, Authenticator, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let local = keys::load_or_create(&dir.path().join("local.pem")).unwrap();
        let idp = keys::load_or_create(&dir.path().join("idp.pem")).unwrap();
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(idp.signing.verifying_key().as_bytes());
        let jwks: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "idp-1", "alg": "EdDSA", "use": "sig"}
        ]}))
        .unwrap();
        let ext = ExternalIssuer {
            jwks,
            issuer: "https://idp.example".into(),
            audience: "kla-api".into(),
        };
        let auth = Authenticator::new(local.public_pem.as_bytes(), Some(ext)).unwrap();
        (dir, auth, local.private_pem, idp.private_pem)
    }

    fn external(idp_pem: &str, tenants: &[&str], role: &str) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("idp-1".into());
        let now = now_secs();
        let c = serde_json::json!({"iss": "https://idp.example", "sub": "alice", "aud": "kla-api",
                                   "tenants": tenants, "role": role, "exp": now + 600});
        encode(&h, &c, &EncodingKey::from_ed_pem(idp_pem.as_bytes()).unwrap()).unwrap()
    }

    /// The operator role comes only from kla's own key, with no tenant; it acts only in the reserved
    /// `_operator`, and no other role acts there (or in any reserved tenant), whatever its token lists.
    #[test]
    fn the_operator_is_minted_only_locally_and_acts_in_no_tenant() {
        let (_dir, auth, local_pem, idp_pem) = setup();
        let op = mint_operator(local_pem.as_bytes(), "ops".into(), Duration::from_secs(60)).unwrap();
        let p = auth.verify(&op).unwrap();
        assert_eq!(p.role, Role::Operator);
        assert!(p.tenants.is_empty());
        assert!(p.allows_tenant(OPERATOR_TENANT));
        assert!(!p.allows_tenant("acme") && !p.allows_tenant("_system"));

        for tenants in [&[][..], &["acme"]] {
            let t = external(&idp_pem, tenants, "operator");
            assert!(
                matches!(auth.verify(&t), Err(AuthError::InvalidToken(_))),
                "external operator token listing {tenants:?}"
            );
        }
        let ext_admin = auth
            .verify(&external(
                &idp_pem,
                &["acme", "_system", OPERATOR_TENANT],
                "admin",
            ))
            .unwrap();
        assert!(ext_admin.allows_tenant("acme"));
        assert!(!ext_admin.allows_tenant("_system") && !ext_admin.allows_tenant(OPERATOR_TENANT));
        assert!(
            mint(
                local_pem.as_bytes(),
                Vec::new(),
                Role::Operator,
                "x".into(),
                None,
                Duration::from_secs(60)
            )
            .is_err()
        );
    }

    /// A sign-in link is never a credential, only [`Authenticator::verify_desk_link`] reads it; the session it
    /// becomes is marked as one; Desk tokens come only from kla's own key, for one tenant and an approving role.
    #[test]
    fn desk_links_and_sessions_are_told_apart_from_api_tokens() {
        let (_dir, auth, local_pem, idp_pem) = setup();
        let ttl = Duration::from_secs(600);
        let mint_link = || {
            mint_desk_link(
                local_pem.as_bytes(),
                "acme".into(),
                Role::Approver,
                "alice".into(),
                ttl,
            )
            .unwrap()
        };
        let code = mint_link();
        assert!(matches!(auth.verify(&code), Err(AuthError::InvalidToken(m)) if m.contains("sign-in link")));
        let link = auth.verify_desk_link(&code).unwrap();
        assert!(
            link.jti.starts_with("dl_") && link.jti.len() == 35,
            "{}",
            link.jti
        );
        assert_eq!(&*link.principal.subject, "alice");
        assert_eq!(link.principal.role, Role::Approver);
        assert_eq!(&*link.principal.tenants, ["acme".to_owned()]);
        let other = mint_link();
        assert_ne!(auth.verify_desk_link(&other).unwrap().jti, link.jti);

        let session = mint_desk_session(local_pem.as_bytes(), &link, ttl).unwrap();
        let p = auth.verify(&session).unwrap();
        assert!(p.desk_session);
        assert_eq!(&*p.subject, "alice");
        assert!(matches!(
            auth.verify_desk_link(&session),
            Err(AuthError::InvalidToken(_))
        ));

        let api = mint(
            local_pem.as_bytes(),
            vec!["acme".into()],
            Role::Approver,
            "a".into(),
            None,
            ttl,
        )
        .unwrap();
        assert!(!auth.verify(&api).unwrap().desk_session);
        assert!(
            matches!(auth.verify_desk_link(&api), Err(AuthError::InvalidToken(m)) if m.contains("not a Decision Desk"))
        );

        for role in [Role::Agent, Role::Auditor, Role::Operator] {
            assert!(mint_desk_link(local_pem.as_bytes(), "acme".into(), role, "x".into(), ttl).is_err());
        }
        assert!(
            mint_desk_link(
                local_pem.as_bytes(),
                "_system".into(),
                Role::Admin,
                "x".into(),
                ttl
            )
            .is_err()
        );

        // Hand-made Desk tokens that kla would never mint.
        let now = now_secs();
        let local_key = EncodingKey::from_ed_pem(local_pem.as_bytes()).unwrap();
        let forged =
            |claims: serde_json::Value| encode(&Header::new(Algorithm::EdDSA), &claims, &local_key).unwrap();
        let base = |tenants: serde_json::Value, role: &str, extra: serde_json::Value| {
            let mut c = serde_json::json!({"iss": "kla", "sub": "alice", "aud": "kla", "tenants": tenants,
                                           "role": role, "exp": now + 600, "desk": "link", "jti": "dl_x"});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        let two = forged(base(
            serde_json::json!(["acme", "beta"]),
            "approver",
            serde_json::json!({}),
        ));
        assert!(
            matches!(auth.verify_desk_link(&two), Err(AuthError::InvalidToken(m)) if m.contains("exactly one tenant"))
        );
        let agent = forged(base(serde_json::json!(["acme"]), "agent", serde_json::json!({})));
        assert!(auth.verify_desk_link(&agent).is_err());
        let bound = forged(base(
            serde_json::json!(["acme"]),
            "admin",
            serde_json::json!({"agent": "bot"}),
        ));
        assert!(auth.verify_desk_link(&bound).is_err());
        let no_jti = forged(base(
            serde_json::json!(["acme"]),
            "admin",
            serde_json::json!({"jti": null}),
        ));
        assert!(
            matches!(auth.verify_desk_link(&no_jti), Err(AuthError::InvalidToken(m)) if m.contains("jti"))
        );
        let bad_kind = forged(base(
            serde_json::json!(["acme"]),
            "admin",
            serde_json::json!({"desk": "door"}),
        ));
        assert!(
            matches!(auth.verify_desk_link(&bad_kind), Err(AuthError::InvalidToken(m)) if m.contains("'desk'"))
        );

        // An external issuer cannot mint Desk tokens.
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("idp-1".into());
        let c = serde_json::json!({"iss": "https://idp.example", "sub": "alice", "aud": "kla-api",
                                   "tenants": ["acme"], "role": "approver", "exp": now + 600, "desk": "session"});
        let ext = encode(&h, &c, &EncodingKey::from_ed_pem(idp_pem.as_bytes()).unwrap()).unwrap();
        assert!(matches!(auth.verify(&ext), Err(AuthError::InvalidToken(m)) if m.contains("kla's own key")));
    }
}
