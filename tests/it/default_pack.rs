//! The shipped default pack through the real server: values of the wrong type or out of range fail closed with
//! their own reason codes (they used to be allowed), good values decide as before, and the pack loads under the
//! key embedded in the binary.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};

const T: &str = "acme-prod";

/// Evaluates `action` with `context` and asserts the decision and its reason codes; returns the body.
/// An agent of tenant `T` with its own token, asking the default pack.
struct Asker<'a> {
    s: &'a Server,
    tok: String,
    agent: String,
}

impl<'a> Asker<'a> {
    /// Registers the agent `name` with a new agent token.
    async fn new(s: &'a Server, name: &str) -> Asker<'a> {
        let tok = s.token(T, Role::Agent);
        let agent = s.register(&tok, T, name).await;
        Asker { s, tok, agent }
    }

    /// Asks about `action` in `context`; asserts the decision `want` with the reason `codes`, returns the answer.
    async fn decide(&self, action: &str, context: Value, want: &str, codes: &[&str]) -> Value {
        let r = self
            .s
            .evaluate(&self.tok, T, &self.agent, action, context.clone())
            .await;
        assert_eq!(r.status, 200, "{action} {context}: {}", r.body);
        assert_eq!(r.body["decision"], want, "{action} {context}: {}", r.body);
        assert_eq!(
            r.body["reasonCodes"],
            json!(codes),
            "{action} {context}: {}",
            r.body
        );
        r.body
    }
}

fn rule_ids(body: &Value) -> Vec<&str> {
    body["matchedRules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn payment_amounts_of_the_wrong_type_or_sign_are_blocked() {
    let s = Server::start().await;
    let a = Asker::new(&s, "billing").await;
    // Each of these was allowed: true counted as 1, "5" was converted, negatives are below any limit.
    for amount in [
        json!(true),
        json!(false),
        json!("5"),
        json!("5000"),
        json!("NaN"),
        json!(null),
        json!({"value": 5000}),
        json!([5000]),
        json!(-5000),
        json!(-0.01),
    ] {
        let body = a
            .decide(
                "execute_payment",
                json!({"amount": amount}),
                "block",
                &["INVALID_AMOUNT"],
            )
            .await;
        assert_eq!(rule_ids(&body), ["invalid-payment-amount"], "{amount}: {body}");
        assert_eq!(body["matchedRules"][0]["pack"], "kla-default");
    }
    // Good values decide as before.
    a.decide("execute_refund", json!({"amount": 20}), "allow", &[])
        .await;
    a.decide("execute_refund", json!({"amount": 0}), "allow", &[])
        .await;
    let body = a
        .decide(
            "vendor_payment",
            json!({"amount": 1250.5}),
            "require_approval",
            &["AMOUNT_OVER_THRESHOLD"],
        )
        .await;
    assert_eq!(body["requiresDeskApproval"], true);
    a.decide(
        "transfer_funds",
        json!({"amount": 1e308}),
        "require_approval",
        &["AMOUNT_OVER_THRESHOLD"],
    )
    .await;
    a.decide(
        "execute_payment",
        json!({"currency": "EUR"}),
        "require_approval",
        &["AMOUNT_OVER_THRESHOLD"],
    )
    .await;
    // A number JSON cannot hold as a finite double never reaches the policy.
    let r = send(
        s.req(Method::POST, "/v1/decisions.evaluate", &a.tok, T)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"agentId":"{}","action":"execute_payment","context":{{"amount":1e400}}}}"#,
                a.agent
            )),
    )
    .await;
    r.assert_error(400, "invalid_request");
}

#[tokio::test]
async fn email_recipients_in_cc_or_bcc_and_malformed_fields_do_not_pass_as_internal() {
    let s = Server::start().await;
    let a = Asker::new(&s, "mailer").await;
    let email = |context, want, codes| a.decide("send_email", context, want, codes);
    // External recipients only in cc or bcc were allowed.
    for context in [
        json!({"from": "a@acme.com", "to": ["b@acme.com"], "cc": ["x@gmail.com"]}),
        json!({"from": "a@acme.com", "bcc": ["x@gmail.com"]}),
        json!({"from": "a@acme.com", "to": ["x@Partner.EXAMPLE"]}),
    ] {
        email(context, "warn", &["EXTERNAL_EMAIL"]).await;
    }
    // Domains are compared lowercased, so mixed case is still internal.
    let mixed_case =
        json!({"from": "a@partner.example", "to": ["x@Partner.EXAMPLE"], "cc": ["y@PARTNER.example"]});
    email(mixed_case, "allow", &[]).await;
    // Fields the rule cannot read: each of these was allowed (or only warned).
    for context in [
        json!({"to": ["x@gmail.com"]}),
        json!({"from": 5, "to": ["x@gmail.com"]}),
        json!({"from": null, "to": ["x@gmail.com"]}),
        json!({"from": ["a@acme.com"], "to": ["x@gmail.com"]}),
        json!({"from": "a@acme.com", "to": "x@gmail.com"}),
        json!({"from": "a@acme.com", "to": ["b@acme.com"], "bcc": "x@gmail.com"}),
        json!({"from": "a@acme.com", "to": "x@gmail.com, b@acme.com"}),
        json!({"from": "a@acme.com", "to": ["x@gmail.com@acme.com"]}),
        json!({"from": "a@acme.com", "to": [5]}),
        json!({"from": "a@acme.com", "to": [], "cc": [], "bcc": []}),
        json!({"from": "a@acme.com"}),
    ] {
        let body = email(context.clone(), "block", &["INVALID_EMAIL_FIELDS"]).await;
        assert_eq!(rule_ids(&body), ["invalid-email-fields"], "{context}: {body}");
    }
    email(
        json!({"from": "a@acme.com", "to": ["b@acme.com", "c@ACME.com"]}),
        "allow",
        &[],
    )
    .await;
}

#[tokio::test]
async fn the_default_pack_is_signed_by_the_key_in_the_binary() {
    let s = Server::start().await;
    let key = kla::policy::TrustedKey::parse(kla::app::DEFAULT_PACK_KEY).unwrap();
    let admin = s.token(T, Role::Admin);
    let st = send(s.req(Method::GET, "/v1/policies", &admin, T)).await;
    assert_eq!(st.status, 200, "{}", st.body);
    let pack = &st.body["packs"][0];
    assert_eq!(pack["name"], "kla-default", "{}", st.body);
    assert_eq!(pack["signerKeyId"], key.id(), "{}", st.body);
    let version = semver::Version::parse(pack["version"].as_str().unwrap()).unwrap();
    assert!(
        version > semver::Version::new(1, 0, 0),
        "the fail-closed rules came after 1.0.0: {version}"
    );
}
