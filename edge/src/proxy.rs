//! Forwarding to the gateway and the chainstore: JSON over HTTP/1.1 (bodies read whole,
//! within the size limit, so that a write can carry the signed-in author), gRPC over
//! HTTP/2 with bodies and trailers streamed through.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sekisho_jsonproxy::ApiError;
use tonic::Code;

use crate::auth::Principal;

/// How long an upstream has to start answering a JSON request.
const JSON_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Upstreams {
    http: Client<HttpConnector, Body>,
    grpc: Client<HttpConnector, Body>,
    pub gateway: Uri,
    pub chainstore: Uri,
}

impl Upstreams {
    pub fn new(gateway: Uri, chainstore: Uri) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Upstreams {
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector.clone()),
            grpc: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
            gateway,
            chainstore,
        }
    }

    pub fn base(&self, upstream: &str) -> &Uri {
        if upstream == "gateway" {
            &self.gateway
        } else {
            &self.chainstore
        }
    }

    /// GETs `path` from the gateway and returns the body (for /metrics).
    pub async fn get_gateway(&self, path: &str, limit: usize) -> Result<Bytes, String> {
        let uri = join(&self.gateway, path).map_err(|e| e.to_string())?;
        let req = Request::get(uri)
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(JSON_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        axum::body::to_bytes(Body::new(resp.into_body()), limit)
            .await
            .map_err(|e| e.to_string())
    }

    /// Forwards a JSON request to `upstream` at `path_and_query`. A chainstore write
    /// gets the signed-in principal as its `author`, whatever the body said.
    pub async fn json(
        &self,
        upstream: &str,
        path_and_query: &str,
        req: Request<Body>,
        who: &Principal,
        set_author: bool,
        limit: usize,
    ) -> Response {
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(_) => {
                return ApiError::too_large(format!(
                    "the request body is over the edge's limit of {limit} bytes"
                ))
                .into_response();
            }
        };
        let body = if set_author {
            with_author(body, &who.name)
        } else {
            body
        };
        let uri = match join(self.base(upstream), path_and_query) {
            Ok(u) => u,
            Err(e) => return ApiError::new(Code::InvalidArgument, e).into_response(),
        };
        let mut out = Request::builder().method(parts.method).uri(uri);
        if let Some(h) = out.headers_mut() {
            copy_headers(&parts.headers, h);
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            if let Ok(v) = HeaderValue::from_str(&who.name) {
                h.insert(HeaderName::from_static("x-sekisho-principal"), v);
            }
        }
        let Ok(out) = out.body(Body::from(body)) else {
            return ApiError::new(Code::Internal, "cannot build the upstream request")
                .into_response();
        };
        match tokio::time::timeout(JSON_TIMEOUT, self.http.request(out)).await {
            Ok(Ok(resp)) => relay(resp),
            Ok(Err(e)) => ApiError::new(
                Code::Unavailable,
                format!("the {upstream} cannot be reached: {e}"),
            )
            .into_response(),
            Err(_) => ApiError::new(
                Code::DeadlineExceeded,
                format!("the {upstream} did not answer within {JSON_TIMEOUT:?}"),
            )
            .into_response(),
        }
    }

    /// Forwards a gRPC call, streaming both ways. A chainstore write (`CreateChain`,
    /// `UpdateChain`, `Rollback`) is unary: its one message is read whole (within
    /// `limit`) and re-encoded with the caller as its `author`, whatever it said.
    pub async fn grpc(
        &self,
        upstream: &str,
        req: Request<Body>,
        who: &Principal,
        limit: usize,
    ) -> Response {
        let (parts, body) = req.into_parts();
        let method = parts.uri.path().rsplit('/').next().unwrap_or_default();
        let body = if upstream == "chainstore" && AUTHORED.contains(&method) {
            let whole = match axum::body::to_bytes(body, limit).await {
                Ok(b) => b,
                Err(_) => {
                    return tonic::Status::resource_exhausted(format!(
                        "the request is over the edge's limit of {limit} bytes"
                    ))
                    .into_http();
                }
            };
            match grpc_with_author(method, &whole, &who.name) {
                Ok(b) => Body::from(b),
                Err(status) => return status.into_http(),
            }
        } else {
            body
        };
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let uri = match join(self.base(upstream), path) {
            Ok(u) => u,
            Err(e) => return tonic::Status::invalid_argument(e).into_http(),
        };
        let mut out = Request::builder().method(parts.method).uri(uri);
        if let Some(h) = out.headers_mut() {
            copy_headers(&parts.headers, h);
            h.remove(header::CONTENT_LENGTH);
            h.insert(header::TE, HeaderValue::from_static("trailers"));
            if let Ok(v) = HeaderValue::from_str(&who.name) {
                h.insert(HeaderName::from_static("x-sekisho-principal"), v);
            }
        }
        let Ok(out) = out.body(body) else {
            return tonic::Status::internal("cannot build the upstream request").into_http();
        };
        match self.grpc.request(out).await {
            Ok(resp) => relay(resp),
            Err(e) => tonic::Status::unavailable(format!("the {upstream} cannot be reached: {e}"))
                .into_http(),
        }
    }
}

fn relay(resp: http::Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// `base` (scheme, authority, optional path prefix) followed by `path_and_query`.
pub fn join(base: &Uri, path_and_query: &str) -> Result<Uri, String> {
    let prefix = base.path().trim_end_matches('/');
    let pq = if path_and_query.starts_with('/') {
        path_and_query.to_owned()
    } else {
        format!("/{path_and_query}")
    };
    Uri::builder()
        .scheme(base.scheme_str().unwrap_or("http"))
        .authority(base.authority().map(|a| a.as_str()).unwrap_or_default())
        .path_and_query(format!("{prefix}{pq}"))
        .build()
        .map_err(|e| format!("bad path `{path_and_query}`: {e}"))
}

/// Copies end-to-end headers; the caller's credentials stay at the edge.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if is_hop_by_hop(k)
            || k == header::HOST
            || k == header::AUTHORIZATION
            || k == header::COOKIE
            || k == header::CONTENT_LENGTH
            || k.as_str() == "x-sekisho-principal"
            || k.as_str() == "x-sekisho-csrf"
        {
            continue;
        }
        to.append(k.clone(), v.clone());
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h.keys().filter(|k| is_hop_by_hop(k)).cloned().collect();
    for n in names {
        h.remove(n);
    }
}

fn is_hop_by_hop(k: &HeaderName) -> bool {
    matches!(
        k.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The chainstore's gRPC writes that carry an author.
const AUTHORED: [&str; 3] = ["CreateChain", "UpdateChain", "Rollback"];

/// A unary gRPC request body (one length-prefixed message) of `method` re-encoded with
/// `author` set. A body that is not exactly one uncompressed message of that type is
/// refused: it is never forwarded with the author it claimed.
fn grpc_with_author(method: &str, body: &[u8], author: &str) -> Result<Bytes, tonic::Status> {
    use prost::Message;
    use sekisho_proto::chainstore::v1 as cs;

    let bad = |why: &str| tonic::Status::invalid_argument(format!("{method}: {why}"));
    let (head, message) = body.split_at_checked(5).ok_or_else(|| bad("no message"))?;
    if head[0] != 0 {
        return Err(tonic::Status::unimplemented(format!(
            "{method}: the edge does not accept compressed chain writes; send them uncompressed"
        )));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len != message.len() {
        return Err(bad("expected exactly one message"));
    }
    fn redo<M: Message + Default>(
        message: &[u8],
        set: impl FnOnce(&mut M),
    ) -> Result<Vec<u8>, prost::DecodeError> {
        let mut m = M::decode(message)?;
        set(&mut m);
        Ok(m.encode_to_vec())
    }
    let author = author.to_owned();
    let encoded = match method {
        "CreateChain" => redo(message, |m: &mut cs::CreateChainRequest| m.author = author),
        "UpdateChain" => redo(message, |m: &mut cs::UpdateChainRequest| m.author = author),
        "Rollback" => redo(message, |m: &mut cs::RollbackRequest| m.author = author),
        _ => return Err(bad("carries no author")),
    }
    .map_err(|e| bad(&format!("cannot decode the request: {e}")))?;
    let mut out = Vec::with_capacity(5 + encoded.len());
    out.push(0);
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
    Ok(Bytes::from(out))
}

/// The body with `"author"` set, when it is a JSON object; otherwise as it was (the
/// upstream names what is wrong with it).
fn with_author(body: Bytes, author: &str) -> Bytes {
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("author".into(), serde_json::Value::String(author.into()));
            serde_json::to_vec(&m).map(Bytes::from).unwrap_or(body)
        }
        _ => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_onto_the_base() {
        let b: Uri = "http://127.0.0.1:7070".parse().unwrap();
        assert_eq!(
            join(&b, "/v1/chains?x=1").unwrap().to_string(),
            "http://127.0.0.1:7070/v1/chains?x=1"
        );
        let b: Uri = "http://cs:7070/prefix/".parse().unwrap();
        assert_eq!(
            join(&b, "v1/chains").unwrap().to_string(),
            "http://cs:7070/prefix/v1/chains"
        );
    }

    #[test]
    fn writes_carry_the_signed_in_author() {
        let b = with_author(
            Bytes::from_static(br#"{"document":"x","author":"mallory"}"#),
            "ana",
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["author"], "ana");
        assert_eq!(v["document"], "x");
        let not_json = Bytes::from_static(b"{nope");
        assert_eq!(with_author(not_json.clone(), "ana"), not_json);
    }

    #[test]
    fn grpc_writes_carry_the_callers_name() {
        use prost::Message;
        use sekisho_proto::chainstore::v1 as cs;
        let frame = |m: &[u8], flag: u8| {
            let mut b = vec![flag];
            b.extend_from_slice(&(m.len() as u32).to_be_bytes());
            b.extend_from_slice(m);
            b
        };
        let req = cs::UpdateChainRequest {
            name: "c".into(),
            document: "doc".into(),
            expected_version: 3,
            author: "mallory".into(),
            comment: "why".into(),
        };
        let out = grpc_with_author("UpdateChain", &frame(&req.encode_to_vec(), 0), "ana").unwrap();
        assert_eq!(out[0], 0);
        assert_eq!(
            u32::from_be_bytes(out[1..5].try_into().unwrap()) as usize,
            out.len() - 5
        );
        let back = cs::UpdateChainRequest::decode(&out[5..]).unwrap();
        assert_eq!(
            back,
            cs::UpdateChainRequest {
                author: "ana".into(),
                ..req.clone()
            }
        );

        let rb = cs::RollbackRequest {
            name: "c".into(),
            ..Default::default()
        };
        let out = grpc_with_author("Rollback", &frame(&rb.encode_to_vec(), 0), "ana").unwrap();
        assert_eq!(
            cs::RollbackRequest::decode(&out[5..]).unwrap().author,
            "ana"
        );

        let one = frame(&req.encode_to_vec(), 0);
        let two = [one.clone(), one.clone()].concat();
        let code = |r: Result<Bytes, tonic::Status>| r.unwrap_err().code();
        assert_eq!(
            code(grpc_with_author("UpdateChain", &two, "ana")),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(grpc_with_author("UpdateChain", &one[..3], "ana")),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(grpc_with_author(
                "UpdateChain",
                &frame(&req.encode_to_vec(), 1),
                "ana"
            )),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            code(grpc_with_author(
                "UpdateChain",
                &frame(b"\xff\xff", 0),
                "ana"
            )),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn credentials_and_hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        from.insert(header::COOKIE, "sekisho_session=y".parse().unwrap());
        from.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        from.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        from.insert("x-sekisho-principal", "forged".parse().unwrap());
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to);
        assert_eq!(to.len(), 1);
        assert!(to.contains_key(header::CONTENT_TYPE));
    }
}
