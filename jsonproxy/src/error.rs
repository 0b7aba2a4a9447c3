//! Errors as HTTP JSON, in the one shape every Sekisho HTTP API uses:
//! `{"error": {"code": 404, "status": "NOT_FOUND", "message": "..."}}`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use tonic::Code;

pub use sekisho_proto::RETRY_PUSHBACK;

/// An error on its way to an HTTP client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status:?}: {message}")]
pub struct ApiError {
    pub http: StatusCode,
    pub status: Code,
    pub message: String,
    /// When a retry may succeed (from a status's `grpc-retry-pushback-ms`): sent as
    /// `Retry-After`, in whole seconds rounded up.
    pub retry_after: Option<std::time::Duration>,
}

impl ApiError {
    pub fn new(status: Code, message: impl Into<String>) -> Self {
        ApiError {
            http: http_status(status),
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError {
            http: StatusCode::PAYLOAD_TOO_LARGE,
            status: Code::ResourceExhausted,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let mut e = ApiError::new(s.code(), s.message());
        e.retry_after = sekisho_proto::retry_pushback(&s);
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": {
                "code": self.http.as_u16(),
                "status": code_name(self.status),
                "message": self.message,
            }
        });
        let mut response = (self.http, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_millis().div_ceil(1000).max(1);
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(secs as u64),
            );
        }
        if self.http == StatusCode::PAYLOAD_TOO_LARGE {
            close_connection(&mut response);
        }
        response
    }
}

/// Marks a response as the last on its connection. A request whose body is answered
/// before it has been read to its end (refused as too large, or sent to no API) leaves
/// the rest of that body in the connection, and the server closes it after the response:
/// RFC 9112 §9.6 says to tell the client, or a client that keeps the connection alive
/// sends its next request into a socket that is closing, and sees it fail.
pub fn close_connection(response: &mut Response) {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
}

/// The HTTP status for a gRPC code, as google.rpc.Code documents it.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The canonical upper-case name of a gRPC code.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
