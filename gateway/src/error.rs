//! The gateway's errors, and their one mapping to `tonic::Status` (the JSON proxy maps
//! statuses to HTTP in its own single place).

use tonic::{Code, Status};

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
