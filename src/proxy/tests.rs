use super::config::{FileAction, FileProxy, FileRoute, validate};
use super::*;
use serde_json::Value;
use std::collections::BTreeMap;

fn file(routes: Vec<FileRoute>) -> FileProxy {
    FileProxy {
        tenant: Some("acme".into()),
        agent: Some("claims-triage".into()),
        routes: Some(routes),
        ..FileProxy::default()
    }
}

fn billing() -> FileRoute {
    FileRoute {
        name: "billing".into(),
        prefix: "/billing".into(),
        upstream: "http://127.0.0.1:9000/api".into(),
        ca_file: None,
        kind: None,
        hide_blocked_tools: None,
        actions: Some(vec![
            FileAction {
                method: "post".into(),
                path: "/refunds".into(),
                action: "Execute_Refund".into(),
                context: Some(BTreeMap::from([("amount".into(), "/amount".into())])),
            },
            FileAction {
                method: "DELETE".into(),
                path: "/customers/{id}".into(),
                action: "delete_customer".into(),
                context: None,
            },
        ]),
        ..FileRoute::default()
    }
}

fn err(f: FileProxy) -> String {
    match validate(Some(f), None) {
        Err(e) => e.to_string(),
        Ok(_) => String::from("accepted"),
    }
}

#[test]
fn no_routes_no_proxy() {
    assert!(matches!(validate(None, None), Ok(None)));
    assert!(matches!(
        validate(Some(file(vec![])), Some("bad".into())),
        Ok(None)
    ));
}

#[test]
fn valid_section() {
    let Ok(Some(p)) = validate(Some(file(vec![billing()])), None) else {
        panic!("valid section refused")
    };
    assert_eq!(p.addr.to_string(), "127.0.0.1:8701");
    assert_eq!(p.routes[0].actions[0].action, "execute_refund");
    assert_eq!(p.routes[0].actions[0].method, http::Method::POST);
    assert!(p.routes[0].actions[0].needs_body());
    assert!(!p.routes[0].actions[1].needs_body());
    let Ok(Some(p)) = validate(Some(file(vec![billing()])), Some("127.0.0.1:0".into())) else {
        panic!("flag refused")
    };
    assert_eq!(p.addr.port(), 0);
}

#[test]
fn bad_sections_name_what_is_wrong() {
    let mut f = file(vec![billing()]);
    f.tenant = None;
    assert!(err(f).contains("proxy.tenant is required"));
    let mut r = billing();
    r.upstream = "ftp://x/".into();
    assert!(err(file(vec![r])).contains("must be an http or https URL"));
    let mut r = billing();
    r.prefix = "billing".into();
    assert!(err(file(vec![r])).contains("prefix"));
    let mut r = billing();
    r.prefix = "/a/../b".into();
    assert!(err(file(vec![r])).contains("prefix"));
    assert!(err(file(vec![billing(), billing()])).contains("name is used twice"));
    let mut r2 = billing();
    r2.name = "other".into();
    r2.prefix = "/billing/".into();
    assert!(err(file(vec![billing(), r2])).contains("is also route"));
    let mut r = billing();
    if let Some(a) = r.actions.as_mut() {
        a[0].action = "refund now".into();
    }
    assert!(err(file(vec![r])).contains("actions[0]: action"));
    let mut r = billing();
    if let Some(a) = r.actions.as_mut() {
        a[1].path = "/customers/{id".into();
    }
    assert!(err(file(vec![r])).contains("actions[1]: path"));
    let mut r = billing();
    if let Some(a) = r.actions.as_mut() {
        a[0].context = Some(BTreeMap::from([("amount".into(), "amount".into())]));
    }
    assert!(err(file(vec![r])).contains("neither a JSON pointer"));
    let mut r = billing();
    r.unmatched = Some("allow".into());
    assert!(err(file(vec![r])).contains("unmatched"));
    let mut r = billing();
    r.significant_headers = Some(vec!["bad header".into()]);
    assert!(err(file(vec![r])).contains("significant-headers"));
    let mut r = billing();
    if let Some(a) = r.actions.as_mut() {
        a[0].method = "NOT A METHOD".into();
    }
    assert!(err(file(vec![r])).contains("not an HTTP method"));
}

fn routes() -> Routes {
    let mut root = billing();
    root.name = "root".into();
    root.prefix = "/".into();
    root.actions = None;
    let Ok(Some(p)) = validate(Some(file(vec![root, billing()])), None) else {
        panic!("valid section refused")
    };
    Routes::new(p.routes)
}

#[test]
fn longest_prefix_on_segment_boundaries() {
    let r = routes();
    let Some((route, rest)) = r.route("/billing/refunds") else {
        panic!("no route")
    };
    assert_eq!((route.name.as_str(), rest), ("billing", "/refunds"));
    let Some((route, rest)) = r.route("/billing") else {
        panic!("no route")
    };
    assert_eq!((route.name.as_str(), rest), ("billing", "/"));
    let Some((route, rest)) = r.route("/billingx/y") else {
        panic!("no route")
    };
    assert_eq!((route.name.as_str(), rest), ("root", "/billingx/y"));
}

#[test]
fn actions_match_method_and_template() {
    let r = routes();
    let Ok(Some(m)) = r.resolve(&http::Method::DELETE, "/billing/customers/c-42") else {
        panic!("no route")
    };
    assert_eq!(m.name, "delete_customer");
    assert_eq!(m.context.get("id"), Some(&Value::from("c-42")));
    // Parameters reach the policy decoded, as the upstream's router reads them.
    let Ok(Some(m)) = r.resolve(&http::Method::DELETE, "/billing/customers/c%2042") else {
        panic!("no route")
    };
    assert_eq!(m.context.get("id"), Some(&Value::from("c 42")));
    let Ok(Some(m)) = r.resolve(&http::Method::GET, "/billing/customers/c-42") else {
        panic!("no route")
    };
    assert_eq!(m.name, HTTP_REQUEST);
    assert_eq!(m.context.get("method"), Some(&Value::from("GET")));
    assert_eq!(
        m.context.get("path"),
        Some(&Value::from("/billing/customers/c-42"))
    );
    let Ok(Some(m)) = r.resolve(&http::Method::DELETE, "/billing/customers/c-42/x") else {
        panic!("no route")
    };
    assert_eq!(m.name, HTTP_REQUEST);
}

#[test]
fn near_misses_of_an_action_are_refused_unless_the_route_says_its_upstream_ignores_them() {
    let r = routes();
    for path in [
        "/billing/Customers/c-42",
        "/billing/customers/c-42/",
        "/billing/CUSTOMERS/c-42/",
    ] {
        assert!(
            r.resolve(&http::Method::DELETE, path).is_err(),
            "{path} was not refused"
        );
    }
    let mut loose = billing();
    loose.case_insensitive = Some(true);
    loose.ignore_trailing_slash = Some(true);
    let Ok(Some(p)) = validate(Some(file(vec![loose])), None) else {
        panic!("valid section refused")
    };
    let r = Routes::new(p.routes);
    let Ok(Some(m)) = r.resolve(&http::Method::DELETE, "/billing/CUSTOMERS/c-42/") else {
        panic!("not matched")
    };
    assert_eq!(m.name, "delete_customer");
    assert_eq!(
        (m.rest, m.path.as_str()),
        ("/CUSTOMERS/c-42", "/billing/CUSTOMERS/c-42")
    );
}

#[test]
fn body_context_reads_pointers() {
    let r = routes();
    let Ok(Some(m)) = r.resolve(&http::Method::POST, "/billing/refunds") else {
        panic!("no route")
    };
    let Some(a) = m.action else { panic!("no action") };
    let mut ctx = m.context.clone();
    assert!(body_context(a, br#"{"amount": 900, "user_id": "u1"}"#, &mut ctx).is_ok());
    assert_eq!(ctx.get("amount"), Some(&Value::from(900)));
    assert!(body_context(a, b"not json", &mut ctx).is_err());
    assert!(body_context(a, br#"{"amount": 1, "amount": 2}"#, &mut ctx).is_err());
    // Keys that differ only by case, at any depth: a case-insensitive binder would read either.
    assert!(body_context(a, br#"{"Amount": 5000, "amount": 50}"#, &mut ctx).is_err());
    assert!(body_context(a, br#"{"x": [{"To": 1, "to": 2}]}"#, &mut ctx).is_err());
}

#[test]
fn from_the_config_file_and_flag() {
    let yaml = r#"
proxy:
  addr: 127.0.0.1:9999
  tenant: acme
  routes:
    - name: billing
      prefix: /billing
      upstream: https://billing.internal:8443
      actions:
        - {method: POST, path: /refunds, action: execute_refund, context: {amount: /amount}}
        - {method: DELETE, path: "/customers/{id}", action: delete_customer}
"#;
    let Ok(raw) = crate::config::RawConfig::from_yaml(yaml) else {
        panic!("yaml refused")
    };
    let Ok(cfg) = raw.clone().validate() else {
        panic!("config refused")
    };
    let Some(p) = cfg.proxy else {
        panic!("no proxy section")
    };
    assert_eq!(p.addr.port(), 9999);
    assert!(p.agent.is_none());
    assert_eq!(p.routes[0].actions.len(), 2);
    let flag = crate::config::RawConfig {
        proxy_addr: Some("127.0.0.1:7777".into()),
        ..Default::default()
    };
    let Ok(cfg) = flag.over(raw).validate() else {
        panic!("config refused")
    };
    assert_eq!(cfg.proxy.map(|p| p.addr.port()), Some(7777));
    let unknown = "proxy:\n  tenant: acme\n  rutes: []\n";
    assert!(crate::config::RawConfig::from_yaml(unknown).is_err());
}
