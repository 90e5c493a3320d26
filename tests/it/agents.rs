//! The agent registry: registration, signed manifest hashes, versions under a stable id.

use crate::harness::*;
use base64::Engine;
use kla::auth::{Role, keys};
use reqwest::Method;
use serde_json::json;

const T: &str = "acme-prod";

#[tokio::test]
async fn registering_an_agent_returns_a_signed_manifest_hash() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Agent);
    let r = send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&agent_body("claims-triage")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["agentId"].as_str().unwrap();
    assert!(id.starts_with("agt_"));
    let hash = r.body["manifestHash"].as_str().unwrap();
    assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64);
    let at = r.body["registeredAt"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).is_ok()
            && at.ends_with('Z'),
        "RFC 3339 UTC: {at}"
    );
    assert!(r.body["signature"].as_str().unwrap().starts_with("ed25519:"));
    assert_eq!(r.body["version"], 1);
    let key_id = r.body["signatureKeyId"].as_str().unwrap();
    assert!(
        key_id
            .strip_prefix("ed25519:")
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit())),
        "{key_id}"
    );
    let lineage = r.body["lineageId"].as_str().unwrap();
    let entry = s.get(&format!("/v1/lineage/{lineage}"), &tok, T).await;
    assert_eq!(entry.status, 200, "{}", entry.body);
    assert_eq!(entry.body["kind"], "agent.registered");
    // The hash is SHA-256 over the RFC 8785 canonical manifest.
    let canonical = r#"{"description":"Triages inbound insurance claims","model":"gpt-4.1","name":"claims-triage","temperature":0.2,"tools":["lookup_policy","flag_for_review"]}"#;
    use sha2::Digest;
    assert_eq!(
        hash,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(canonical)))
    );
    // The signature verifies with kla's registry key.
    let key = keys::load(&keys::registry_key_path(&s.data_dir)).unwrap();
    let sig_b64 = r.body["signature"]
        .as_str()
        .unwrap()
        .trim_start_matches("ed25519:");
    let sig = base64::engine::general_purpose::STANDARD.decode(sig_b64).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    use ed25519_dalek::Verifier;
    key.signing
        .verifying_key()
        .verify(hash.as_bytes(), &sig)
        .expect("manifest signature verifies");

    let one = send(s.req(Method::GET, &format!("/v1/agents/{id}"), &tok, T)).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["agentId"], id);
    assert_eq!(one.body["name"], "claims-triage");
    assert_eq!(one.body["version"], 1);
    assert_eq!(one.body["manifestHash"], hash);
    assert_eq!(one.body["registeredAt"], at);
    assert!(one.body["createdAt"].is_string(), "{}", one.body);
    assert_eq!(one.body["manifest"], agent_body("claims-triage"));
    let versions = one.body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    for field in [
        "manifestHash",
        "signature",
        "signatureKeyId",
        "registeredAt",
        "lineageId",
        "version",
    ] {
        assert_eq!(versions[0][field], r.body[field], "{field}: {}", one.body);
    }
    assert_eq!(versions[0]["manifest"], agent_body("claims-triage"));
}

#[tokio::test]
async fn registry_versions_under_a_stable_id() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let first = send(s.req(Method::POST, "/v1/agents", &tok, T).json(&agent_body("a1"))).await;
    assert_eq!(first.status, 201);
    let again = send(s.req(Method::POST, "/v1/agents", &tok, T).json(&agent_body("a1"))).await;
    again.assert_error(409, "conflict");

    let mut changed = agent_body("a1");
    changed["model"] = json!("gpt-5");
    changed["endpoint"] = json!("http://127.0.0.1:9/run");
    changed["owner"] = json!("claims-team");
    let second = send(s.req(Method::POST, "/v1/agents", &tok, T).json(&changed)).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["agentId"], first.body["agentId"]);
    assert_eq!(second.body["version"], 2);
    assert_ne!(second.body["manifestHash"], first.body["manifestHash"]);

    let id = first.body["agentId"].as_str().unwrap();
    let one = send(s.req(Method::GET, &format!("/v1/agents/{id}"), &tok, T)).await;
    assert_eq!(one.status, 200, "{}", one.body);
    let versions = one.body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["manifestHash"], first.body["manifestHash"]);
    assert_eq!(versions[1]["version"], 2);
    assert_eq!(versions[1]["manifestHash"], second.body["manifestHash"]);
    assert_eq!(versions[1]["manifest"], changed);
    assert_eq!(one.body["version"], 2);
    assert_eq!(one.body["manifestHash"], second.body["manifestHash"]);

    // The list shows the agent once, at its latest version.
    let list = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let agents = list.body["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["agentId"], id);
    assert_eq!(agents[0]["version"], 2);
    assert_eq!(agents[0]["manifestHash"], second.body["manifestHash"]);
    assert_eq!(agents[0]["manifest"], changed);
}
