//! The Decision Desk's web page at `/desk` and its sign-in.
//!
//! Owns the page's static assets (one HTML, one script, one stylesheet under `page/`, compiled into the binary,
//! served with ETags and a strict Content-Security-Policy: no inline script or style, nothing from another
//! origin), and the sign-in that turns a one-time link (`kla token --desk`) into the `kla_desk` session cookie
//! (`HttpOnly`, `SameSite=Strict`, `Secure` on HTTPS). The page decides nothing: it calls the public `/v1` routes
//! from the browser (the approvals, the event stream) like any other client, authenticated by that cookie (see
//! `api::auth`) or by a pasted API token. It must not hold approval logic or touch the store beyond recording a
//! link's single use.
//!
//! Routes (outside `/v1`, outside its auth pipeline): `GET /desk`, `GET /desk/assets/{name}`, `GET /desk/session`
//! (who is signed in), `POST /desk/session` (exchange a link's code), `POST /desk/logout`.

mod assets;
mod session;

use crate::auth::Authenticator;
use crate::server::json::BodyLimit;
use crate::store::Store;
use axum::Router;
use axum::extract::FromRef;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use std::sync::Arc;

pub use session::{DESK_COOKIE, SESSION_TTL, X_KLA_DESK, desk_cookie};

/// What the Desk's sign-in needs from the server it runs in: token verification, kla's signing key, and the store
/// (only to record a sign-in link's single use).
pub struct Desk {
    auth: Arc<Authenticator>,
    store: Store,
    /// kla's token signing key (PEM), which mints the session a link is exchanged for.
    signing_pem: String,
    /// Whether the listener serves HTTPS, so the session cookie is `Secure`.
    secure_cookie: bool,
    /// The API listener's body limit (the sign-in's JSON body).
    body_limit: usize,
}

/// The Desk's router state.
pub(crate) type SharedDesk = Arc<Desk>;

impl Desk {
    /// The Desk of a server whose token key is `signing_pem`, on the API listener (HTTPS if `tls`, bodies up to
    /// `body_limit`).
    pub fn new(
        auth: Arc<Authenticator>,
        store: Store,
        signing_pem: String,
        tls: bool,
        body_limit: usize,
    ) -> Desk {
        Desk {
            auth,
            store,
            signing_pem,
            secure_cookie: tls,
            body_limit,
        }
    }
}

impl FromRef<SharedDesk> for BodyLimit {
    fn from_ref(d: &SharedDesk) -> BodyLimit {
        BodyLimit(d.body_limit)
    }
}

/// The Content-Security-Policy of every `/desk` answer: everything from kla's own origin, no inline script or
/// style, no framing, no `<base>` or form posts elsewhere.
pub const CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// The Desk's routes, mounted on the API listener beside `/v1` (not under its pipeline).
pub fn routes(desk: Desk) -> Router {
    Router::new()
        .route("/desk", get(assets::page))
        .route("/desk/", get(assets::page))
        .route("/desk/assets/{name}", get(assets::asset))
        .route("/desk/session", get(session::current).post(session::exchange))
        .route("/desk/logout", post(session::logout))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(Arc::new(desk))
}

/// Headers on every `/desk` answer, errors included.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}
