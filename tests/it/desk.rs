//! The Decision Desk page at `/desk` and its sign-in: the page and its headers, one-time links minted by the real
//! `kla token --desk`, the session cookie and what it may do on `/v1`, and the whole page in headless Chromium
//! (driven by `tests/py/desk_browser.py` with Selenium) approving an action live while the agent's long-poll waits.

use crate::harness::*;
use kla::auth::{Role, keys};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: &str = "acme";

/// `kla token --desk` for this server: the printed link.
fn desk_link(s: &Api, subject: &str, role: &str) -> String {
    kla_token(
        &s.data_dir,
        &[
            "--desk",
            "--tenant",
            T,
            "--subject",
            subject,
            "--role",
            role,
            "--url",
            s.base.as_str(),
        ],
    )
}

/// The code in a link's fragment.
fn code_of(link: &str) -> String {
    link.split_once("#code=").expect("a #code= fragment").1.to_owned()
}

/// `POST /desk/session {"code"}` as the page sends it.
async fn exchange(s: &Api, code: &str) -> Resp {
    send(
        s.anon(Method::POST, "/desk/session")
            .header("x-kla-desk", "1")
            .json(&json!({ "code": code })),
    )
    .await
}

/// The `kla_desk` cookie's attributes from a `Set-Cookie` header: (value, the other attributes).
fn set_cookie(r: &Resp) -> (String, Vec<String>) {
    let all: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    let mut parts = all[0].split(';').map(|p| p.trim().to_owned());
    let first = parts.next().unwrap();
    let value = first
        .strip_prefix("kla_desk=")
        .expect("the kla_desk cookie")
        .to_owned();
    (value, parts.collect())
}

/// A signed-in session cookie for `subject` with `role`.
async fn signed_in(s: &Api, subject: &str, role: &str) -> String {
    let r = exchange(s, &code_of(&desk_link(s, subject, role))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    set_cookie(&r).0
}

/// A request carrying only the Desk cookie.
fn with_cookie(s: &Api, method: Method, path: &str, cookie: &str) -> reqwest::RequestBuilder {
    s.anon(method, path)
        .header("cookie", format!("theme=dark; kla_desk={cookie}"))
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_under_a_strict_csp() {
    let s = Server::start().await;
    let page = send(s.anon(Method::GET, "/desk")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").expect("a CSP header");
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    let html = page.text();
    assert!(html.contains(r#"<script src="/desk/assets/desk.js" defer></script>"#));
    assert!(html.contains(r#"<link rel="stylesheet" href="/desk/assets/desk.css">"#));
    assert!(!html.contains("<style") && !html.contains(" style=") && !html.contains(" onclick="));

    for (path, ct, needle) in [
        (
            "/desk/assets/desk.js",
            "text/javascript; charset=utf-8",
            "/v1/events?types=",
        ),
        (
            "/desk/assets/desk.css",
            "text/css; charset=utf-8",
            ":focus-visible",
        ),
        ("/desk", "text/html; charset=utf-8", "Decision Desk"),
    ] {
        let r = send(s.anon(Method::GET, path)).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ct), "{path}");
        assert!(r.text().contains(needle), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert!(r.header("content-security-policy").is_some(), "{path}");
        let etag = r.header("etag").expect("an ETag").to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
            "{etag}"
        );
        let again = send(s.anon(Method::GET, path).header("if-none-match", &etag)).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.bytes.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let other = send(s.anon(Method::GET, path).header("if-none-match", "\"0\"")).await;
        assert_eq!(other.status, 200, "{path}");
    }
    let missing = send(s.anon(Method::GET, "/desk/assets/secret.txt")).await;
    missing.assert_error(404, "not_found");
    assert!(missing.header("content-security-policy").is_some());
    send(s.anon(Method::DELETE, "/desk"))
        .await
        .assert_error(405, "invalid_request");
}

#[tokio::test]
async fn a_desk_link_signs_in_once_with_a_strict_cookie() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start_cfg(raw(tmp.path()), None).await;
    let link = desk_link(&s, "alice", "approver");
    assert!(link.starts_with(&format!("{}/desk#code=", s.base)), "{link}");
    let code = code_of(&link);

    let r = exchange(&s, &code).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["subject"], "alice");
    assert_eq!(r.body["role"], "approver");
    assert_eq!(r.body["tenant"], T);
    assert!(
        r.body["expiresAt"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        r.body
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let (session, attrs) = set_cookie(&r);
    assert_eq!(session.split('.').count(), 3, "a JWT");
    assert_ne!(session, code, "the session is a new token, not the link");
    for want in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(attrs.iter().any(|a| a == want), "{want} in {attrs:?}");
    }
    assert!(!attrs.iter().any(|a| a == "Secure"), "plain HTTP: {attrs:?}");

    // Single use: the same code again, even right away, is refused.
    let again = exchange(&s, &code).await;
    again.assert_error(401, "unauthorized");
    assert!(
        again.body["message"]
            .as_str()
            .unwrap()
            .contains("already been used"),
        "{}",
        again.body
    );
    assert!(again.headers.get("set-cookie").is_none());

    // The session cookie says who is signed in.
    let who = send(with_cookie(&s, Method::GET, "/desk/session", &session)).await;
    assert_eq!(who.status, 200, "{}", who.body);
    assert_eq!(
        (who.body["subject"].as_str(), who.body["tenant"].as_str()),
        (Some("alice"), Some(T))
    );
    send(s.anon(Method::GET, "/desk/session"))
        .await
        .assert_error(401, "unauthorized");

    // Single use survives a restart: the use is in the store, not in memory.
    let link2 = desk_link(&s, "bob", "admin");
    assert_eq!(exchange(&s, &code_of(&link2)).await.status, 200);
    s.stop().await;
    let s = Server::start_cfg(raw(tmp.path()), None).await;
    exchange(&s, &code_of(&link2))
        .await
        .assert_error(401, "unauthorized");
    exchange(&s, &code).await.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn two_browsers_racing_one_link_get_one_session() {
    let s = Server::start().await;
    let code = code_of(&desk_link(&s, "alice", "approver"));
    let tries: Vec<_> = (0..6)
        .map(|_| {
            let (s, code) = (s.api.clone(), code.clone());
            tokio::spawn(async move { exchange(&s, &code).await.status.as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tries {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 401, 401, 401, 401, 401]);
}

#[tokio::test]
async fn the_cookie_authenticates_v1_and_its_writes_need_the_desk_header() {
    let s = Server::start().await;
    let admin = signed_in(&s, "root", "admin").await;

    // Reads: the cookie alone, the tenant from the session.
    let r = send(with_cookie(&s, Method::GET, "/v1/agents", &admin)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(with_cookie(&s, Method::GET, "/v1/agents", &admin).header("x-tenant-id", T)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    send(with_cookie(&s, Method::GET, "/v1/agents", &admin).header("x-tenant-id", "other"))
        .await
        .assert_error(403, "forbidden");

    // A write without the header is what another site could make the browser send: refused before the handler.
    let r = send(with_cookie(&s, Method::POST, "/v1/policies/reload", &admin)).await;
    r.assert_error(403, "forbidden");
    assert!(
        r.body["message"].as_str().unwrap().contains("x-kla-desk: 1"),
        "{}",
        r.body
    );
    for bad in ["0", "true", ""] {
        send(with_cookie(&s, Method::POST, "/v1/policies/reload", &admin).header("x-kla-desk", bad))
            .await
            .assert_error(403, "forbidden");
    }
    let r =
        send(with_cookie(&s, Method::POST, "/v1/policies/reload", &admin).header("x-kla-desk", "1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A form-style body with the header is still not JSON.
    send(
        with_cookie(&s, Method::POST, "/v1/agents", &admin)
            .header("x-kla-desk", "1")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("name=x"),
    )
    .await
    .assert_error(400, "invalid_request");

    // The session is a cookie credential only; an API token is never taken from the cookie.
    send(
        s.anon(Method::GET, "/v1/agents")
            .bearer_auth(&admin)
            .header("x-tenant-id", T),
    )
    .await
    .assert_error(401, "unauthorized");
    let api_token = s.token(T, Role::Admin);
    let r = send(with_cookie(&s, Method::GET, "/v1/agents", &api_token)).await;
    r.assert_error(401, "unauthorized");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("no Decision Desk session"),
        "{}",
        r.body
    );
    send(with_cookie(&s, Method::GET, "/v1/agents", "not-a-jwt"))
        .await
        .assert_error(401, "unauthorized");
    // With both, the Authorization header is the credential (and a bearer token needs no Desk header).
    let r = send(
        with_cookie(&s, Method::POST, "/v1/policies/reload", &admin)
            .bearer_auth(&api_token)
            .header("x-tenant-id", T),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // An approver's session has an approver's rights, no more.
    let approver = signed_in(&s, "alice", "approver").await;
    send(with_cookie(&s, Method::POST, "/v1/policies/reload", &approver).header("x-kla-desk", "1"))
        .await
        .assert_error(403, "forbidden");
}

/// The page's own path through the approvals routes, without a browser: list with the cookie alone, decide with
/// the cookie and the Desk header; kla records the session's person.
#[tokio::test]
async fn a_desk_session_decides_an_approval_as_its_person() {
    let s = Server::start().await;
    let agent_token = s.token(T, Role::Agent);
    let agent = s.register(&agent_token, T, "claims-bot").await;
    let d = s
        .decide(
            &agent_token,
            T,
            json!({"agentId": agent, "action": "execute_refund", "context": {"amount": 5000}}),
        )
        .await;
    let approval = d["approvalId"].as_str().expect("approvalId").to_owned();
    let alice = signed_in(&s, "alice", "approver").await;

    let list = send(with_cookie(
        &s,
        Method::GET,
        "/v1/approvals?status=PENDING&limit=100",
        &alice,
    ))
    .await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["approvals"][0]["approvalId"], approval.as_str());
    assert_eq!(list.body["counts"]["PENDING"], 1);

    let path = format!("/v1/approvals/{approval}/decision");
    let body = json!({"decision": "APPROVED", "comment": "checked"});
    send(with_cookie(&s, Method::POST, &path, &alice).json(&body))
        .await
        .assert_error(403, "forbidden");
    let still = s
        .get(&format!("/v1/approvals/{approval}"), &s.token(T, Role::Admin), T)
        .await;
    assert_eq!(
        still.body["status"], "PENDING",
        "the refused request changed nothing"
    );
    let r = send(
        with_cookie(&s, Method::POST, &path, &alice)
            .header("x-kla-desk", "1")
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "APPROVED");
    assert_eq!(
        r.body["resolvedBy"],
        json!({"subject": "alice", "role": "approver"})
    );
    assert_eq!(r.body["comment"], "checked");
    // Another person's different answer is the conflict the page shows.
    let bob = signed_in(&s, "bob", "approver").await;
    let r = send(
        with_cookie(&s, Method::POST, &path, &bob)
            .header("x-kla-desk", "1")
            .json(&json!({"decision": "DENIED"})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["approval"]["resolvedBy"]["subject"], "alice", "{}", r.body);
}

#[tokio::test]
async fn wrong_expired_and_misused_codes_are_refused() {
    let s = Server::start().await;
    let key = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let forge = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_pem(key.private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let link = |exp: u64, jti: &str| {
        json!({"iss": "kla", "sub": "alice", "aud": "kla", "tenants": [T], "role": "approver",
               "exp": exp, "iat": now, "desk": "link", "jti": jti})
    };
    // Well-formed but expired (past the 5 s leeway).
    let expired = forge(link(now - 60, "dl_expired"));
    let r = exchange(&s, &expired).await;
    r.assert_error(401, "unauthorized");
    assert!(
        r.body["message"].as_str().unwrap().contains("expired"),
        "{}",
        r.body
    );
    // The same claims, valid, sign in: only the expiry was wrong.
    assert_eq!(exchange(&s, &forge(link(now + 60, "dl_fresh"))).await.status, 200);

    let other_key = tempfile::tempdir().unwrap();
    let other = keys::load_or_create(&other_key.path().join("k.pem")).unwrap();
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &link(now + 60, "dl_wrong_key"),
        &jsonwebtoken::EncodingKey::from_ed_pem(other.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let api_token = s.token(T, Role::Approver);
    let session = signed_in(&s, "alice", "approver").await;
    for (what, code) in [
        ("garbage", "not-a-code".to_owned()),
        ("empty", String::new()),
        ("another key", wrong_key),
        ("an API token", api_token),
        ("a session", session),
        (
            "two tenants",
            forge(
                json!({"iss": "kla", "sub": "a", "aud": "kla", "tenants": [T, "b"],
                                      "role": "approver", "exp": now + 60, "desk": "link", "jti": "dl_2"}),
            ),
        ),
        (
            "an agent role",
            forge(json!({"iss": "kla", "sub": "a", "aud": "kla", "tenants": [T],
                                        "role": "agent", "exp": now + 60, "desk": "link", "jti": "dl_3"})),
        ),
        (
            "no jti",
            forge(json!({"iss": "kla", "sub": "a", "aud": "kla", "tenants": [T],
                                 "role": "approver", "exp": now + 60, "desk": "link"})),
        ),
    ] {
        let r = exchange(&s, &code).await;
        r.assert_error(401, "unauthorized");
        assert!(r.headers.get("set-cookie").is_none(), "{what}");
    }

    // A link is not an API token.
    let code = code_of(&desk_link(&s, "alice", "approver"));
    let r = send(s.req(Method::GET, "/v1/agents", &code, T)).await;
    r.assert_error(401, "unauthorized");
    assert!(
        r.body["message"].as_str().unwrap().contains("sign-in link"),
        "{}",
        r.body
    );
    // ... and that attempt did not use it up.
    assert_eq!(exchange(&s, &code).await.status, 200);

    // The exchange itself needs the Desk header and a JSON body with only `code`.
    let fresh = code_of(&desk_link(&s, "alice", "approver"));
    send(
        s.anon(Method::POST, "/desk/session")
            .json(&json!({ "code": fresh })),
    )
    .await
    .assert_error(403, "forbidden");
    send(
        s.anon(Method::POST, "/desk/session")
            .header("x-kla-desk", "1")
            .header("content-type", "text/plain")
            .body(json!({ "code": fresh }).to_string()),
    )
    .await
    .assert_error(400, "invalid_request");
    send(
        s.anon(Method::POST, "/desk/session")
            .header("x-kla-desk", "1")
            .json(&json!({ "code": fresh, "role": "admin" })),
    )
    .await
    .assert_error(400, "invalid_request");
    // None of that spent it.
    assert_eq!(exchange(&s, &fresh).await.status, 200);
}

#[tokio::test]
async fn signing_out_clears_the_cookie() {
    let s = Server::start().await;
    let session = signed_in(&s, "alice", "approver").await;
    send(with_cookie(&s, Method::POST, "/desk/logout", &session))
        .await
        .assert_error(403, "forbidden");
    let r = send(with_cookie(&s, Method::POST, "/desk/logout", &session).header("x-kla-desk", "1")).await;
    assert_eq!(r.status, 204);
    let (value, attrs) = set_cookie(&r);
    assert_eq!(value, "");
    for want in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=0"] {
        assert!(attrs.iter().any(|a| a == want), "{want} in {attrs:?}");
    }
}

#[tokio::test]
async fn the_cookie_is_secure_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _, client) = https_config(tmp.path());
    let s = Server::start_cfg(cfg, Some((client, "localhost"))).await;
    let link = desk_link(&s, "alice", "approver");
    assert!(link.starts_with("https://localhost:"), "{link}");
    let r = exchange(&s, &code_of(&link)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, attrs) = set_cookie(&r);
    assert!(attrs.iter().any(|a| a == "Secure"), "{attrs:?}");
    let r = send(s.anon(Method::POST, "/desk/logout").header("x-kla-desk", "1")).await;
    assert!(set_cookie(&r).1.iter().any(|a| a == "Secure"));
}

#[test]
fn kla_token_desk_refuses_what_it_cannot_mint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let base = ["token", "--data-dir", dir, "--desk"];
    for (args, says) in [
        (&["--tenant", "a", "--tenant", "b"][..], "exactly one tenant"),
        (&["--tenant", "a", "--role", "agent"][..], "approver and admin"),
        (&["--tenant", "a", "--role", "auditor"][..], "approver and admin"),
        (&["--tenant", "a", "--ttl", "2h"][..], "at most 1h"),
        (&["--tenant", "a", "--url", "ftp://x"][..], "--url"),
        (&["--tenant", "a", "--url", "http://x/?q=1"][..], "--url"),
        (&["--tenant", "_system"][..], "not allowed"),
        (&["--tenant", "a", "--agent", "bot"][..], "cannot be used with"),
    ] {
        let out = kla(&[&base[..], args].concat());
        assert!(!out.status.success(), "{args:?}");
        let text = output_text(&out);
        assert!(text.contains(says), "{args:?}: {text}");
    }
    // The defaults: role approver, the default address, a 10-minute code.
    let out = kla(&[&base[..], &["--tenant", "a"][..]].concat());
    assert!(out.status.success(), "{}", output_text(&out));
    let link = String::from_utf8(out.stdout).unwrap();
    let code = link
        .trim()
        .strip_prefix("http://127.0.0.1:8700/desk#code=")
        .expect("default url");
    let claims = claims_of(code);
    assert_eq!(claims["role"], "approver");
    assert_eq!(claims["desk"], "link");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        600
    );
    // `--url` with a trailing slash.
    let link = kla_token(
        tmp.path(),
        &["--desk", "--tenant", "a", "--url", "http://desk.example:1/"],
    );
    assert!(link.starts_with("http://desk.example:1/desk#code="), "{link}");
}

fn claims_of(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// The page in a real browser.

/// What the browser test needs: Chromium, its driver and the Python venv with Selenium. Missing pieces fail the
/// test with what to run, never skip it.
struct Browser {
    python: PathBuf,
    chromium: PathBuf,
    chromedriver: PathBuf,
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

fn browser() -> Browser {
    let python = repo_path(".venv/bin/python");
    let chromium = on_path(&["chromium", "chromium-browser"]);
    let chromedriver = on_path(&["chromedriver"]);
    let selenium = python.is_file()
        && std::process::Command::new(&python)
            .args(["-c", "import selenium"])
            .status()
            .is_ok_and(|s| s.success());
    match (chromium, chromedriver, selenium) {
        (Some(chromium), Some(chromedriver), true) => Browser {
            python,
            chromium,
            chromedriver,
        },
        (chromium, driver, selenium) => panic!(
            "the Desk's browser test needs Chromium ({}), chromedriver ({}) and {} with Selenium ({}): run scripts/test \
             (the README's test command), which installs the Debian packages chromium and chromium-driver and \
             makes the venv from tests/py/requirements.txt",
            found(chromium.is_some()),
            found(driver.is_some()),
            python.display(),
            found(selenium),
        ),
    }
}

fn found(yes: bool) -> &'static str {
    if yes { "found" } else { "missing" }
}

/// The browser script's lines, read as they come.
struct Script {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Script {
    fn start(b: &Browser, link: &str, screenshots: Option<&Path>) -> Script {
        let mut cmd = tokio::process::Command::new(&b.python);
        cmd.arg(repo_path("tests/py/desk_browser.py"))
            .arg("--link")
            .arg(link)
            .arg("--chromium")
            .arg(&b.chromium)
            .arg("--chromedriver")
            .arg(&b.chromedriver)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = screenshots {
            cmd.arg("--screenshots").arg(dir);
        }
        let mut child = cmd.spawn().expect("run the browser script");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        use tokio::io::AsyncBufReadExt;
        Script {
            child,
            stdin,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// The next `{"event"}` line, which must be `want`; an `error` line fails the test with what the page showed.
    async fn expect(&mut self, want: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(90), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser script said nothing for 90 s while we waited for {want}"))
            .expect("read the script's output");
        let Some(line) = line else {
            let status = self.child.wait().await.expect("wait");
            panic!("the browser script exited ({status}) before {want}");
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if v["event"] == "error" {
            panic!(
                "the browser script failed before {want}: {}\nconsole: {}\npage:\n{}\n{}",
                v["message"],
                v["console"],
                v["page"].as_str().unwrap_or(""),
                v["trace"].as_str().unwrap_or("")
            );
        }
        assert_eq!(v["event"], want, "{v}");
        v
    }

    async fn say(&mut self, v: Value) {
        use tokio::io::AsyncWriteExt;
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{v}\n").as_bytes())
            .await
            .expect("write to the script");
        stdin.flush().await.expect("flush");
    }
}

/// A context value an agent could send to attack the people reading it.
const NOTE: &str = "<img src=x onerror=\"document.title='pwned'\"> <b>urgent</b>";

#[tokio::test]
async fn the_desk_in_chromium_decides_live_while_the_long_poll_waits() {
    let b = browser();
    let s = Server::start().await;
    let agent_token = s.token(T, Role::Agent);
    let agent = s.register(&agent_token, T, "claims-bot").await;

    let link = desk_link(&s, "alice", "approver");
    // KLA_DESK_SCREENSHOTS=dir keeps pictures of the page (desktop, phone, history) for a look at it.
    let shots = std::env::var_os("KLA_DESK_SCREENSHOTS").map(PathBuf::from);
    let mut script = Script::start(&b, &link, shots.as_deref());
    let ready = script.expect("ready").await;
    assert!(ready["who"].as_str().unwrap().contains("alice"), "{ready}");
    assert_eq!(ready["pendingBefore"], 0, "{ready}");

    // Only now does the approval exist: the page can learn of it only from the live stream.
    let d = s
        .decide(
            &agent_token,
            T,
            json!({"agentId": agent, "action": "execute_refund",
                   "context": {"amount": 5000, "customer": {"id": "c-7", "tier": "gold"}, "items": ["a", "b"], "note": NOTE},
                   // The whole call, as the tool-call proxy describes a proxied call.
                   "tool": {"route": "billing", "method": "POST", "path": "/billing/refunds", "query": "dest=acct-9",
                            "headers": {"x-account": "ops"},
                            "body": {"contentType": "application/json", "bytes": 40, "sha256": "ab",
                                     "json": {"amount": 5000, "destination": "acct-9"}}}}),
        )
        .await;
    assert_eq!(d["decision"], "require_approval", "{d}");
    let decision_id = d["decisionId"].as_str().unwrap().to_owned();
    let approval_id = d["approvalId"].as_str().expect("approvalId").to_owned();
    let waiting = {
        let (api, tok, id) = (s.api.clone(), agent_token.clone(), decision_id.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = send(api.req(Method::GET, &format!("/v1/decisions/{id}?wait=30s"), &tok, T)).await;
            (r, started.elapsed())
        })
    };

    let comment = "Refund checked against the claim file";
    script
        .say(json!({"approvalId": approval_id, "comment": comment}))
        .await;
    let approved = script.expect("approved").await;
    let card = &approved["card"];
    assert_eq!(card["action"], "execute_refund", "{approved}");
    assert!(
        card["agent"].as_str().unwrap().contains("claims-bot"),
        "{approved}"
    );
    assert_eq!(
        card["reason"], "Payments and refunds over 1000 need approval",
        "{approved}"
    );
    assert_eq!(card["context"]["amount"], "5000", "{approved}");
    assert_eq!(card["context"]["customer.id"], "c-7", "{approved}");
    assert_eq!(card["context"]["customer.tier"], "gold", "{approved}");
    assert_eq!(card["context"]["items"], "a, b", "{approved}");
    assert_eq!(
        card["context"]["note"], NOTE,
        "markup from the agent is shown as text: {approved}"
    );
    assert_eq!(card["elementsInContext"], 0, "{approved}");
    // The approver sees the whole call the approval binds: request line with its query, headers, body.
    assert_eq!(
        card["call"]["request"], "POST /billing/refunds?dest=acct-9",
        "{approved}"
    );
    assert_eq!(card["call"]["headers.x-account"], "ops", "{approved}");
    assert_eq!(card["call"]["body.amount"], "5000", "{approved}");
    assert_eq!(card["call"]["body.destination"], "acct-9", "{approved}");
    assert_eq!(card["call"]["content type"], "application/json", "{approved}");
    assert!(
        card["rules"][0]
            .as_str()
            .unwrap()
            .contains("AMOUNT_OVER_THRESHOLD"),
        "{approved}"
    );
    let left = card["timeLeft"].as_str().unwrap();
    assert!(left.starts_with("14m ") || left.starts_with("15m "), "{left}");
    assert_eq!(
        card["approveLabel"], "Approve execute_refund by claims-bot",
        "{approved}"
    );
    assert_eq!(approved["errors"], json!([]), "{approved}");

    let (r, waited) = tokio::time::timeout(Duration::from_secs(40), waiting)
        .await
        .expect("the long-poll returns")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["finalDecision"], "allow", "{}", r.body);
    assert!(
        waited < Duration::from_secs(30),
        "returned on the decision, not the timeout: {waited:?}"
    );

    let history = script.expect("history").await;
    assert_eq!(history["status"], "APPROVED", "{history}");
    assert_eq!(history["comment"], comment, "{history}");

    // What the page sent is what kla recorded: alice, through her session, with her comment.
    let admin = s.token(T, Role::Admin);
    let a = s.get(&format!("/v1/approvals/{approval_id}"), &admin, T).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "APPROVED");
    assert_eq!(
        a.body["resolvedBy"],
        json!({"subject": "alice", "role": "approver"})
    );
    assert_eq!(a.body["comment"], comment);

    // Signed in again with a pasted API token, the page denies the next one.
    let approver_token = s.token(T, Role::Approver);
    script.say(json!({"token": approver_token})).await;
    let pasted = script.expect("pasted").await;
    assert!(
        pasted["who"].as_str().unwrap().contains("test-approver"),
        "{pasted}"
    );
    let d = s
        .decide(
            &agent_token,
            T,
            json!({"agentId": agent, "action": "execute_payment", "context": {"amount": 1200}}),
        )
        .await;
    let second = d["approvalId"].as_str().expect("approvalId").to_owned();
    let waiting = {
        let (api, tok, id) = (
            s.api.clone(),
            agent_token.clone(),
            d["decisionId"].as_str().unwrap().to_owned(),
        );
        tokio::spawn(async move {
            send(api.req(Method::GET, &format!("/v1/decisions/{id}?wait=30s"), &tok, T)).await
        })
    };
    script
        .say(json!({"approvalId": second, "comment": "Not this one"}))
        .await;
    script.expect("denied").await;
    let r = tokio::time::timeout(Duration::from_secs(40), waiting)
        .await
        .expect("the long-poll returns")
        .unwrap();
    assert_eq!(r.body["finalDecision"], "block", "{}", r.body);
    let a = s.get(&format!("/v1/approvals/{second}"), &admin, T).await;
    assert_eq!(a.body["status"], "DENIED", "{}", a.body);
    assert_eq!(
        a.body["resolvedBy"],
        json!({"subject": "test-approver", "role": "approver"})
    );
    assert_eq!(a.body["comment"], "Not this one");
    let status = tokio::time::timeout(Duration::from_secs(30), script.child.wait())
        .await
        .expect("the script ends")
        .unwrap();
    assert!(status.success(), "{status}");
}
