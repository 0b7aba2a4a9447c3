//! The gateway's errors, and their one mapping to `tonic::Status` (the JSON proxy maps
//! statuses to HTTP in its own single place).

use tonic::{Code, Status};

/// The metadata key of gRPC's server retry pushback (gRPC proposal A6): milliseconds
/// until a retry may succeed.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Overloaded(String),
    /// Over a caller's rate: its next token comes in `retry_after`, which the status
    /// carries as `grpc-retry-pushback-ms` (gRPC's retry pushback; HTTP `Retry-After`).
    #[error("{message}")]
    OverRate {
        message: String,
        retry_after: std::time::Duration,
    },
    /// The gateway is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// A filter failed and its policy is `on_error: fail`.
    #[error("stage `{stage}`: filter `{alias}` failed: {status}")]
    FilterFailed {
        stage: String,
        alias: String,
        status: Status,
    },
    #[error("{0}")]
    Internal(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Status {
        let message = e.to_string();
        match e {
            GatewayError::InvalidArgument(_) => Status::invalid_argument(message),
            GatewayError::NotFound(_) => Status::not_found(message),
            GatewayError::Overloaded(_) => Status::resource_exhausted(message),
            GatewayError::OverRate { retry_after, .. } => {
                let mut status = Status::resource_exhausted(message);
                let ms = retry_after.as_millis().max(1).to_string();
                if let Ok(v) = ms.parse() {
                    status.metadata_mut().insert(RETRY_PUSHBACK, v);
                }
                status
            }
            GatewayError::Unavailable(_) => Status::unavailable(message),
            GatewayError::FilterFailed { status, .. } => {
                // Keep the filter's code (UNAVAILABLE, DEADLINE_EXCEEDED, ...) so callers
                // can tell a timeout from a bad item.
                let code = match status.code() {
                    Code::Ok | Code::Unknown => Code::Internal,
                    c => c,
                };
                Status::new(code, message)
            }
            GatewayError::Config(_) | GatewayError::Internal(_) | GatewayError::Bind { .. } => {
                Status::internal(message)
            }
        }
    }
}
