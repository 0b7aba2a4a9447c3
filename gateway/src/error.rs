//! The gateway's errors, and their one mapping to `tonic::Status` (the JSON proxy maps
//! statuses to HTTP in its own single place).

use std::time::Duration;

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// Shed: over a limit. When it is known when a retry may succeed (a caller's next
    /// token), the status carries it as `grpc-retry-pushback-ms` (gRPC's retry pushback;
    /// HTTP `Retry-After`).
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Option<Duration>,
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

impl GatewayError {
    /// Shed, with no word on when a retry may succeed.
    pub fn overloaded(message: String) -> Self {
        GatewayError::Overloaded {
            message,
            retry_after: None,
        }
    }
}

impl From<GatewayError> for Status {
    fn from(e: GatewayError) -> Status {
        let message = e.to_string();
        match e {
            GatewayError::InvalidArgument(_) => Status::invalid_argument(message),
            GatewayError::NotFound(_) => Status::not_found(message),
            GatewayError::Overloaded { retry_after, .. } => {
                let status = Status::resource_exhausted(message);
                match retry_after {
                    Some(after) => sekisho_proto::with_retry_pushback(status, after),
                    None => status,
                }
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
