//! Transcoding one HTTP/JSON request into a gRPC call and back.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, Kind, ReflectMessage, SerializeOptions, Value,
};
use tonic::Code;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use crate::codec::RawCodec;
use crate::error::{ApiError, close_connection};
use crate::routes::{Route, field_path};

/// The gRPC service the proxy forwards to.
pub type Upstream = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::Status,
>;

/// Wraps any gRPC-speaking tower service (a server's routes, a `Channel`) as an [`Upstream`].
pub fn upstream<S, B>(svc: S) -> Upstream
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        svc.map_response(|r: http::Response<B>| r.map(tonic::body::Body::new))
            .map_err(|e: S::Error| tonic::Status::from_error(e.into())),
    )
}

/// Serves annotated methods over HTTP/JSON by forwarding them to `upstream`.
#[derive(Clone)]
pub struct JsonProxy {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Vec<Route>,
    upstream: Upstream,
    max_body_bytes: usize,
}

impl std::fmt::Debug for JsonProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonProxy")
            .field("routes", &self.inner.routes.len())
            .finish()
    }
}

/// Headers that describe the HTTP hop, not the call.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "content-type",
    "host",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "accept",
    "accept-encoding",
];

impl JsonProxy {
    /// `max_body_bytes` bounds a JSON body; a larger one is refused with 413 before it is
    /// read whole.
    pub fn new(routes: Vec<Route>, upstream: Upstream, max_body_bytes: usize) -> Self {
        JsonProxy {
            inner: Arc::new(Inner {
                routes,
                upstream,
                max_body_bytes,
            }),
        }
    }

    pub fn routes(&self) -> &[Route] {
        &self.inner.routes
    }

    /// Handles one HTTP request; unmatched paths get a JSON 404.
    pub fn handle(
        &self,
        req: Request<Body>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + 'static>> {
        let this = self.clone();
        Box::pin(async move {
            match this.transcode(req).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        })
    }

    async fn transcode(&self, req: Request<Body>) -> Result<Response, ApiError> {
        let path = req.uri().path().to_owned();
        let (route, vars) = match route_for(&self.inner.routes, req.method(), &path) {
            Ok(found) => found,
            Err(mut response) => {
                // The body of a request sent to no API is never read.
                if !req.body().is_end_stream() {
                    close_connection(&mut response);
                }
                return Ok(*response);
            }
        };
        let query = req.uri().query().unwrap_or("").to_owned();
        let (parts, body) = req.into_parts();
        let body = read_limited(&parts.headers, body, self.inner.max_body_bytes).await?;

        let input = route.input();
        let mut msg = if route.body.is_empty() {
            DynamicMessage::new(input.clone())
        } else {
            let target = if route.body == "*" {
                input.clone()
            } else {
                match input.get_field_by_name(&route.body).map(|f| f.kind()) {
                    Some(Kind::Message(m)) => m,
                    _ => return Err(ApiError::new(Code::Internal, "body field is not a message")),
                }
            };
            let parsed = parse_json(target, &body)?;
            if route.body == "*" {
                parsed
            } else {
                let mut m = DynamicMessage::new(input.clone());
                m.set_field_by_name(&route.body, Value::Message(parsed));
                m
            }
        };
        for (field, value) in vars {
            if route.body == "*"
                && let Some(body) = set_elsewhere(&msg, &field, &value)
            {
                return Err(ApiError::new(
                    Code::InvalidArgument,
                    format!(
                        "field `{field}` is {body} in the body but `{value}` in the path; \
                         leave it out of the body (the path sets it)"
                    ),
                ));
            }
            set_path(&mut msg, &field, &value)
                .map_err(|e| ApiError::new(Code::InvalidArgument, e))?;
        }
        if route.body != "*" {
            for (k, v) in form_urlencoded::parse(query.as_bytes()) {
                set_path(&mut msg, &k, &v).map_err(|e| {
                    ApiError::new(Code::InvalidArgument, format!("query parameter `{k}`: {e}"))
                })?;
            }
        }

        let mut metadata_headers = HeaderMap::new();
        for (k, v) in &parts.headers {
            if !HOP_HEADERS.contains(&k.as_str()) {
                metadata_headers.append(k.clone(), v.clone());
            }
        }
        let request = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(metadata_headers),
            tonic::Extensions::default(),
            Bytes::from(msg.encode_to_vec()),
        );
        let grpc_path = http::uri::PathAndQuery::try_from(route.grpc_path.as_str())
            .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
        let reply = call_unary(self.inner.upstream.clone(), request, grpc_path).await?;
        let out = DynamicMessage::decode(route.output(), reply.into_inner())
            .map_err(|e| ApiError::new(Code::Internal, format!("bad upstream reply: {e}")))?;
        let mut ser = serde_json::Serializer::new(Vec::new());
        out.serialize_with_options(
            &mut ser,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
        Ok((
            [(http::header::CONTENT_TYPE, "application/json")],
            ser.into_inner(),
        )
            .into_response())
    }
}

/// A path template's variables and their values, as matched.
pub type PathVars = Vec<(String, String)>;

/// The route of `routes` that takes `method` at `path`, with the path's variables; or
/// the answer when none does: 404 when no route matches the path, 405 naming the methods
/// that do (RFC 9110: a 405 lists them in `Allow`).
pub fn route_for<'a>(
    routes: &'a [Route],
    method: &http::Method,
    path: &str,
) -> Result<(&'a Route, PathVars), Box<Response>> {
    let mut allowed: Vec<&str> = Vec::new();
    for route in routes {
        if let Some(vars) = route.template.matches(path) {
            if route.http_method == method {
                return Ok((route, vars));
            }
            allowed.push(route.http_method.as_str());
        }
    }
    if allowed.is_empty() {
        return Err(Box::new(
            ApiError::new(
                Code::NotFound,
                format!("no API at {path}; see /openapi.json"),
            )
            .into_response(),
        ));
    }
    allowed.sort_unstable();
    allowed.dedup();
    Err(Box::new(method_not_allowed(
        method,
        path,
        &allowed.join(", "),
    )))
}

/// 405 for `method` at `path`, naming the methods it does take (`allow`, as the `Allow`
/// header lists them).
pub fn method_not_allowed(method: &http::Method, path: &str, allow: &str) -> Response {
    let mut response = ApiError {
        http: StatusCode::METHOD_NOT_ALLOWED,
        status: Code::Unimplemented,
        message: format!("{method} is not allowed on {path} (allowed: {allow})"),
        retry_after: None,
    }
    .into_response();
    if let Ok(v) = http::HeaderValue::from_str(allow) {
        response.headers_mut().insert(http::header::ALLOW, v);
    }
    response
}

/// One unary call through the upstream, as a boxed future with concrete types (which
/// keeps rustc's `Send` inference for the handler future simple).
fn call_unary(
    upstream: Upstream,
    request: tonic::Request<Bytes>,
    path: http::uri::PathAndQuery,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<tonic::Response<Bytes>, tonic::Status>> + Send>,
> {
    Box::pin(async move {
        let mut client = tonic::client::Grpc::new(upstream);
        client
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("upstream not ready: {e}")))?;
        client.unary(request, path, RawCodec).await
    })
}

async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::too_large(format!(
            "the request body is over {limit} bytes, this server's limit"
        ))
    };
    if let Some(len) = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    // Read frame by frame so that a body without Content-Length is refused as soon as
    // it passes the limit, not after it has been buffered whole.
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                Code::InvalidArgument,
                format!("cannot read the request body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn parse_json(
    desc: prost_reflect::MessageDescriptor,
    body: &[u8],
) -> Result<DynamicMessage, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let msg = DynamicMessage::deserialize_with_options(
        desc,
        serde_path_to_error::Deserializer::new(&mut de, &mut track),
        &DeserializeOptions::new(),
    )
    .and_then(|m| de.end().map(|()| m))
    .map_err(|e| {
        let path = track.path().to_string();
        let at = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!("field `{path}`: ")
        };
        ApiError::new(Code::InvalidArgument, format!("invalid JSON: {at}{e}"))
    })?;
    Ok(msg)
}

/// The value (as JSON) a body gave the (dotted) field that `raw` in the path sets, when it
/// gave one other than `raw`'s; a body that repeats the path's value, or leaves the field
/// out, is fine.
fn set_elsewhere(msg: &DynamicMessage, path: &str, raw: &str) -> Option<String> {
    let (name, rest) = match path.split_once('.') {
        Some((name, rest)) => (name, Some(rest)),
        None => (path, None),
    };
    let field = msg.descriptor().get_field_by_name(name)?;
    if !msg.has_field(&field) {
        return None;
    }
    let given = msg.get_field(&field);
    if let Some(rest) = rest {
        return set_elsewhere(given.as_message()?, rest, raw);
    }
    if field.is_list() || scalar(&field.kind(), raw).ok().as_ref() == Some(&*given) {
        return None;
    }
    Some(match &*given {
        Value::String(s) => format!("`{s}`"),
        Value::U64(n) => format!("`{n}`"),
        Value::I64(n) => format!("`{n}`"),
        Value::U32(n) => format!("`{n}`"),
        Value::I32(n) => format!("`{n}`"),
        other => format!("{other:?}"),
    })
}

/// Sets a (dotted) field from its text form, as path variables and query parameters are.
fn set_path(msg: &mut DynamicMessage, path: &str, raw: &str) -> Result<(), String> {
    let desc = msg.descriptor();
    let field = field_path(&desc, path).ok_or_else(|| format!("no field `{path}`"))?;
    let value = scalar(&field.kind(), raw)?;
    let (parents, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let mut target = msg;
    if let Some(parents) = parents {
        for p in parents.split('.') {
            target = target
                .get_field_by_name_mut(p)
                .and_then(Value::as_message_mut)
                .ok_or_else(|| format!("`{p}` is not a message"))?;
        }
    }
    if field.is_list() {
        let slot = target
            .get_field_by_name_mut(last)
            .ok_or_else(|| format!("no field `{last}`"))?;
        if let Some(list) = slot.as_list_mut() {
            list.push(value);
        }
    } else {
        target.set_field_by_name(last, value);
    }
    Ok(())
}

fn scalar(kind: &Kind, raw: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("`{raw}` is not {what}");
    Ok(match kind {
        Kind::String => Value::String(raw.to_owned()),
        Kind::Bool => Value::Bool(raw.parse().map_err(|_| bad("true or false"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(raw.parse().map_err(|_| bad("an integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(raw.parse().map_err(|_| bad("an integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32(raw.parse().map_err(|_| bad("an unsigned integer"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64(raw.parse().map_err(|_| bad("an unsigned integer"))?)
        }
        Kind::Float => Value::F32(raw.parse().map_err(|_| bad("a number"))?),
        Kind::Double => Value::F64(raw.parse().map_err(|_| bad("a number"))?),
        Kind::Enum(e) => match e.get_value_by_name(raw) {
            Some(v) => Value::EnumNumber(v.number()),
            None => Value::EnumNumber(raw.parse().map_err(|_| bad("a value of this enum"))?),
        },
        Kind::Bytes => {
            use base64::Engine;
            Value::Bytes(
                base64::engine::general_purpose::STANDARD
                    .decode(raw)
                    .map_err(|_| bad("base64"))?
                    .into(),
            )
        }
        Kind::Message(m) => return Err(format!("`{}` cannot be set from text", m.full_name())),
    })
}
