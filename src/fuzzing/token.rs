//! Bearer tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{Value, json};

use crate::auth::{AuthError, Authenticator, ExternalIssuer, Principal, Role};

use super::{Verdict, key_from};

/// The key of kla's own tokens in the token target (fixed, so seeds stay valid).
pub fn token_local_key() -> SigningKey {
    key_from("kla fuzzing: local token key")
}

/// The external issuer's key in the token target.
pub fn token_idp_key() -> SigningKey {
    key_from("kla fuzzing: external issuer key")
}

/// The external issuer, audience and key id of the token target.
pub const TOKEN_IDP: (&str, &str, &str) = ("https://idp.example", "kla-api", "idp-1");

fn authenticator() -> Authenticator {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let pem = token_local_key()
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap_or_else(|e| panic!("cannot encode the local key: {e}"));
    let (issuer, audience, kid) = TOKEN_IDP;
    let x = B64URL.encode(token_idp_key().verifying_key().as_bytes());
    let jwks = serde_json::from_value(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}
    ]}))
    .unwrap_or_else(|e| panic!("the JWKS does not parse: {e}"));
    let external = ExternalIssuer {
        jwks,
        issuer: issuer.into(),
        audience: audience.into(),
    };
    Authenticator::new(pem.as_bytes(), Some(external)).unwrap_or_else(|e| panic!("no authenticator: {e}"))
}

/// A compact JWS over exactly these header and claims bytes, signed with `key`.
pub fn sign_token(header: &[u8], claims: &[u8], key: &SigningKey) -> String {
    let msg = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let sig = key.sign(msg.as_bytes());
    format!("{msg}.{}", B64URL.encode(sig.to_bytes()))
}

/// Words of Rust, serde, base64 and jsonwebtoken that a refusal must not show the caller (also what the token
/// refusals of the integration tests are checked against).
pub const INTERNALS: &[&str] = &[
    "Error(",
    "Error {",
    "ErrorKind",
    "InvalidAlgorithm",
    "InvalidSignature",
    "ExpiredSignature",
    "Base64",
    "base64",
    "Json",
    "serde",
    "expected",
    "variant",
    "at line",
    "column",
    "`",
    "invalid token",
];

/// A bearer token. The first byte says how the rest is used: as the token itself (0), or as header and claims
/// (split at the first newline) signed with kla's own key (1) or the external issuer's (2), so the fuzzer reaches the
/// claims. A refusal is a 401 whose message speaks the caller's terms; an accepted token names a principal that
/// follows the role and tenant rules, verifies again to the same principal, and is refused once its claims change.
pub fn token(data: &[u8]) -> Verdict {
    let Some((&mode, rest)) = data.split_first() else {
        return Verdict::Refused;
    };
    let token = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return Verdict::Refused,
        },
        m => {
            let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let key = if m == 1 {
                token_local_key()
            } else {
                token_idp_key()
            };
            sign_token(header, claims, &key)
        }
    };
    let auth = authenticator();
    match auth.verify(&token) {
        Ok(p) => {
            check_principal(&token, &p);
            let again = auth
                .verify(&token)
                .unwrap_or_else(|e| panic!("an accepted token is refused the second time: {e}"));
            assert_eq!(
                format!("{p:?}"),
                format!("{again:?}"),
                "a token named two principals"
            );
            let mut parts = token.split('.');
            if let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next())
                && let Ok(mut claims) = B64URL.decode(c)
            {
                claims.push(b' ');
                let changed = format!("{h}.{}.{s}", B64URL.encode(&claims));
                assert!(
                    auth.verify(&changed).is_err(),
                    "a token whose claims changed is accepted"
                );
            }
            Verdict::Accepted
        }
        Err(AuthError::InvalidToken(m)) => {
            // A repeated key is named in the message; it is the caller's own text.
            let ours = m.split("duplicate key '").next().unwrap_or_default();
            assert!(!m.is_empty(), "a token refused without a message");
            for w in INTERNALS {
                assert!(!ours.contains(w), "a refusal shows {w:?}: {m}");
            }
            Verdict::Refused
        }
        Err(e) => panic!("a token was refused as something else than invalid: {e}"),
    }
}

fn check_principal(token: &str, p: &Principal) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "an accepted token is not three parts");
    let decode = |s: &str| {
        B64URL
            .decode(s)
            .unwrap_or_else(|e| panic!("an accepted token part is not base64url: {e}"))
    };
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    for part in [&header, &claims] {
        assert!(
            crate::json::check_unique_keys(part).is_ok(),
            "an accepted token repeats a key"
        );
    }
    let h: Value = serde_json::from_slice(&header).unwrap_or_default();
    let c: Value = serde_json::from_slice(&claims).unwrap_or_default();
    assert_eq!(c["sub"].as_str(), Some(&*p.subject), "subject");
    assert_eq!(c["iss"].as_str(), Some(&*p.issuer), "issuer");
    assert_eq!(c["role"].as_str(), Some(p.role.as_str()), "role");
    let tenants: Vec<&str> = c["tenants"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        tenants,
        p.tenants.iter().map(String::as_str).collect::<Vec<_>>(),
        "tenants"
    );
    assert_eq!(c["agent"].as_str(), p.agent.as_deref(), "agent");
    let local = h.get("kid").is_none();
    if local {
        assert_eq!(
            &*p.issuer,
            crate::auth::LOCAL_ISSUER,
            "a token without kid from another issuer"
        );
    } else {
        assert_eq!(&*p.issuer, TOKEN_IDP.0, "an external token from another issuer");
    }
    if p.role == Role::Operator {
        assert!(local, "an external operator token was accepted");
        assert!(
            p.tenants.is_empty() && p.agent.is_none(),
            "an operator token with a tenant or agent"
        );
    } else {
        assert!(!p.tenants.is_empty(), "a token of a tenant role lists no tenant");
    }
    let now = jsonwebtoken::get_current_timestamp();
    assert!(p.exp + 6 >= now, "an expired token was accepted");
}
