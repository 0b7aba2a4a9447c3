//! The edge: Sekisho's one public entry point. It serves the web UI, signs operators in,
//! and forwards `/api/gateway/…` and `/api/chainstore/…` (JSON) and gRPC calls to the
//! gateway and the chainstore, enforcing who may do what (see [`auth`]) before anything
//! is forwarded. `/api/live` serves the live view drawn from the gateway's metrics.

pub mod assets;
pub mod auth;
pub mod config;
pub mod live;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body::Body as _;
use sekisho_jsonproxy::{ApiError, Route};
use serde::Deserialize;
use tonic::Code;

pub use auth::{Principal, Role};
pub use config::EdgeConfig;

use auth::{Accounts, Need, SignInError};
use live::Live;
use proxy::Upstreams;

/// The session cookie's name.
pub const COOKIE: &str = "sekisho_session";
/// The header the UI sends with every request that changes something. A page on another
/// site cannot send it without a CORS preflight, which the edge never grants, so a
/// signed-in operator's cookie cannot be used from elsewhere.
pub const CSRF_HEADER: &str = "x-sekisho-csrf";

/// The content security policy of every page: only the edge's own scripts, styles and
/// connections; images may also be `data:` and `blob:` (the "try it" preview).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    frame-ancestors 'none'; form-action 'self'";

struct Edge {
    accounts: Accounts,
    upstreams: Upstreams,
    live: Live,
    cfg: EdgeConfig,
    /// The JSON routes of the gateway's and the chainstore's APIs, from the same
    /// descriptors they serve: what neither answers, the edge answers as they would.
    gateway_routes: Vec<Route>,
    chainstore_routes: Vec<Route>,
}

/// A running edge.
pub struct RunningEdge {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    live: tokio::task::JoinHandle<()>,
}

impl RunningEdge {
    pub async fn wait(self) -> std::io::Result<()> {
        let r = self.task.await.unwrap_or(Ok(()));
        self.live.abort();
        r
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("the upstreams' JSON routes: {0}")]
    Routes(#[from] sekisho_jsonproxy::RouteError),
}

/// Binds `cfg.listen` and serves until `shutdown`.
pub async fn start(
    cfg: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningEdge, EdgeError> {
    cfg.validate()?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| EdgeError::Listen {
            addr: cfg.listen.clone(),
            source,
        })?;
    start_on(cfg, listener, shutdown).await
}

/// As [`start`], on a listener already bound (`cfg.listen` is not used).
pub async fn start_on(
    cfg: EdgeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningEdge, EdgeError> {
    cfg.validate()?;
    let url = |what: &str, u: &str| {
        u.parse::<http::Uri>()
            .map_err(|e| config::ConfigError(format!("{what}: {e}")))
    };
    let upstreams = Upstreams::new(
        url("gateway", &cfg.gateway)?,
        url("chainstore", &cfg.chainstore)?,
    );
    let live = Live::new(cfg.metrics_interval, cfg.metrics_samples);
    let live_task = tokio::spawn(live.clone().follow(upstreams.clone()));
    let edge = Arc::new(Edge {
        accounts: Accounts::new(&cfg.users, &cfg.tokens, cfg.session_ttl, cfg.sign_in_limit),
        upstreams,
        live,
        cfg: cfg.clone(),
        gateway_routes: sekisho_jsonproxy::routes(
            sekisho_proto::descriptor_pool(),
            &["sekisho.gateway.v1.Gateway"],
        )?,
        chainstore_routes: sekisho_jsonproxy::routes(
            sekisho_proto::descriptor_pool(),
            &["sekisho.chainstore.v1.ChainStore"],
        )?,
    });
    let listen_error = |source| EdgeError::Listen {
        addr: cfg.listen.clone(),
        source,
    };
    let addr = listener.local_addr().map_err(listen_error)?;
    if !assets::built() {
        tracing::warn!("the web UI is not built (scripts/build-ui.sh); /api/ works without it");
    }
    let app = router(edge);
    let task = tokio::spawn(sekisho_jsonproxy::serve(listener, app, shutdown));
    Ok(RunningEdge {
        addr,
        task,
        live: live_task,
    })
}

fn router(edge: Arc<Edge>) -> Router {
    Router::new()
        .fallback(move |req: Request<Body>| handle(edge.clone(), req))
        .layer(axum::middleware::map_response(security_headers))
}

async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let mut set = |k: &'static str, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set("content-security-policy", CSP);
    set("x-content-type-options", "nosniff");
    set("x-frame-options", "DENY");
    set("referrer-policy", "no-referrer");
    set("cross-origin-opener-policy", "same-origin");
    set(
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
    resp
}

/// Who sent a request, by bearer token or session cookie.
enum Caller {
    Token(Principal),
    Session(Principal, String),
    Anonymous,
    /// A bearer token that names nobody.
    BadToken,
}

fn identify(edge: &Edge, headers: &HeaderMap) -> Caller {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or_default();
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "));
        return match token.and_then(|t| edge.accounts.token(t.trim())) {
            Some(p) => Caller::Token(p),
            None => Caller::BadToken,
        };
    }
    match session_cookie(headers) {
        Some(id) => match edge.accounts.session(&id) {
            Some(p) => Caller::Session(p, id),
            None => Caller::Anonymous,
        },
        None => Caller::Anonymous,
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

async fn handle(edge: Arc<Edge>, req: Request<Body>) -> Response {
    if sekisho_jsonproxy::is_grpc(&req) {
        return grpc(&edge, req).await;
    }
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return "ok".into_response();
    }
    if path == "/api/session" {
        return session(&edge, req).await;
    }
    if let Some(rest) = path.strip_prefix("/api/") {
        return api(&edge, rest.to_owned(), req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return ApiError::new(Code::Unimplemented, format!("no {} {path}", req.method()))
            .into_response();
    }
    assets::serve(&path, req.headers().get(header::IF_NONE_MATCH))
}

/// The caller of a request that must be signed in, or the response refusing it.
#[allow(clippy::result_large_err)]
fn caller(edge: &Edge, req: &Request<Body>) -> Result<Principal, Response> {
    let unsafe_method = req.method() != Method::GET && req.method() != Method::HEAD;
    match identify(edge, req.headers()) {
        Caller::Token(p) => Ok(p),
        Caller::Session(p, _) => {
            if unsafe_method && !req.headers().contains_key(CSRF_HEADER) {
                return Err(ApiError::new(
                    Code::PermissionDenied,
                    format!("a signed-in change needs the {CSRF_HEADER} header"),
                )
                .into_response());
            }
            Ok(p)
        }
        Caller::Anonymous => Err(ApiError::new(
            Code::Unauthenticated,
            "sign in, or send Authorization: Bearer <token>",
        )
        .into_response()),
        Caller::BadToken => Err(ApiError::new(
            Code::Unauthenticated,
            "the bearer token is not one this edge knows",
        )
        .into_response()),
    }
}

async fn api(edge: &Edge, rest: String, req: Request<Body>) -> Response {
    let who = match caller(edge, &req) {
        Ok(c) => c,
        Err(r) => return r,
    };
    if rest == "live" {
        if !Need::Read.allows(who.role) {
            return denied(&who, "the live view");
        }
        return axum::Json(edge.live.view()).into_response();
    }
    let Some((upstream, path)) = rest.split_once('/') else {
        return ApiError::new(Code::NotFound, format!("no API at /api/{rest}")).into_response();
    };
    if upstream != "gateway" && upstream != "chainstore" {
        return ApiError::new(Code::NotFound, format!("no API at /api/{rest}")).into_response();
    }
    let path = format!("/{path}");
    // A method or path that no API of the upstream takes is answered as the upstream
    // answers it (404, or 405 with `Allow`), not as a permission this caller lacks.
    let unrouted = if path == "/openapi.json" {
        (req.method() != Method::GET && req.method() != Method::HEAD)
            .then(|| sekisho_jsonproxy::method_not_allowed(req.method(), &path, "GET, HEAD"))
    } else {
        let routes = if upstream == "gateway" {
            &edge.gateway_routes
        } else {
            &edge.chainstore_routes
        };
        sekisho_jsonproxy::route_for(routes, req.method(), &path)
            .err()
            .map(|r| *r)
    };
    if let Some(mut response) = unrouted {
        if !req.body().is_end_stream() {
            sekisho_jsonproxy::close_connection(&mut response);
        }
        return response;
    }
    let need = auth::need_json(upstream, req.method(), &path);
    if !need.allows(who.role) {
        return denied(&who, &format!("{} {path} on the {upstream}", req.method()));
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let set_author = need == Need::Write;
    edge.upstreams
        .json(
            upstream,
            &pq,
            req,
            &who,
            set_author,
            edge.cfg.max_body_bytes,
        )
        .await
}

fn denied(who: &Principal, what: &str) -> Response {
    ApiError::new(
        Code::PermissionDenied,
        format!(
            "`{}` ({}) may not use {what}",
            who.name,
            serde_json::to_value(who.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ),
    )
    .into_response()
}

async fn grpc(edge: &Edge, req: Request<Body>) -> Response {
    let (need, upstream) = auth::need_grpc(req.uri().path());
    let who = match identify(edge, req.headers()) {
        Caller::Token(p) => p,
        // gRPC callers are programs: they send a token, not a browser's cookie.
        _ => {
            return tonic::Status::unauthenticated(
                "send authorization: Bearer <token> in the call's metadata",
            )
            .into_http();
        }
    };
    let Some(upstream) = upstream else {
        return tonic::Status::unimplemented(format!(
            "the edge does not forward {}",
            req.uri().path()
        ))
        .into_http();
    };
    if !need.allows(who.role) {
        return tonic::Status::permission_denied(format!(
            "`{}` may not call {}",
            who.name,
            req.uri().path()
        ))
        .into_http();
    }
    edge.upstreams
        .grpc(upstream, req, &who, edge.cfg.max_body_bytes)
        .await
}

#[derive(Deserialize)]
struct SignIn {
    name: String,
    password: String,
}

/// `POST /api/session` signs in, `GET` says who is signed in (`{"principal": …}`, null
/// when nobody is), `DELETE` signs out.
async fn session(edge: &Edge, req: Request<Body>) -> Response {
    match *req.method() {
        // Not signed in is an answer here, not an error: the page asks when it loads.
        Method::GET => match identify(edge, req.headers()) {
            Caller::Token(p) | Caller::Session(p, _) => {
                axum::Json(serde_json::json!({ "principal": p })).into_response()
            }
            _ => axum::Json(serde_json::json!({ "principal": null })).into_response(),
        },
        Method::DELETE => {
            if let Caller::Session(_, id) = identify(edge, req.headers()) {
                if !req.headers().contains_key(CSRF_HEADER) {
                    return ApiError::new(
                        Code::PermissionDenied,
                        format!("signing out needs the {CSRF_HEADER} header"),
                    )
                    .into_response();
                }
                edge.accounts.sign_out(&id);
            }
            (
                StatusCode::NO_CONTENT,
                [(header::SET_COOKIE, cookie(edge, "", 0))],
            )
                .into_response()
        }
        Method::POST => {
            if !req.headers().contains_key(CSRF_HEADER) {
                return ApiError::new(
                    Code::PermissionDenied,
                    format!("signing in needs the {CSRF_HEADER} header"),
                )
                .into_response();
            }
            let body = match axum::body::to_bytes(req.into_body(), 4096).await {
                Ok(b) => b,
                Err(_) => return ApiError::too_large("a sign-in is under 4 KiB").into_response(),
            };
            let form: SignIn = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => {
                    return ApiError::new(
                        Code::InvalidArgument,
                        format!("expected {{\"name\": …, \"password\": …}}: {e}"),
                    )
                    .into_response();
                }
            };
            match edge.accounts.sign_in(&form.name, &form.password).await {
                Ok((id, who)) => {
                    tracing::info!(user = %who.name, "signed in");
                    let max_age = edge.accounts.ttl().as_secs();
                    (
                        [(header::SET_COOKIE, cookie(edge, &id, max_age))],
                        axum::Json(who),
                    )
                        .into_response()
                }
                Err(SignInError::Wrong) => {
                    tracing::warn!(user = %form.name, "sign-in refused");
                    ApiError::new(Code::Unauthenticated, "wrong name or password").into_response()
                }
                Err(SignInError::Locked(left)) => {
                    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                    tracing::warn!(user = %form.name, retry_after_s = secs, "sign-in refused: locked after repeated failures");
                    let mut resp = ApiError::new(
                        Code::ResourceExhausted,
                        format!("too many failed sign-ins for this name; try again in {secs} s"),
                    )
                    .into_response();
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                    resp
                }
            }
        }
        _ => ApiError::new(Code::Unimplemented, "GET, POST or DELETE /api/session").into_response(),
    }
}

fn cookie(edge: &Edge, value: &str, max_age: u64) -> String {
    let secure = if edge.cfg.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}
