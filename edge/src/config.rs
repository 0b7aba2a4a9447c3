//! The edge's configuration: where it listens, where the gateway and the chainstore
//! are, and who may do what.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Role;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Where the edge listens: the one port that needs to be public.
    pub listen: String,
    /// The gateway's base URL (JSON, gRPC and /metrics).
    pub gateway: String,
    /// The chainstore's base URL (JSON and gRPC).
    pub chainstore: String,
    /// People who sign in to the UI with a password.
    pub users: Vec<UserEntry>,
    /// Bearer tokens for services (and for operators' scripts).
    pub tokens: Vec<TokenEntry>,
    /// How long a sign-in lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Turn off only for plain
    /// HTTP on localhost.
    pub secure_cookies: bool,
    /// The largest request body the edge forwards (images travel base64 in JSON).
    pub max_body_bytes: usize,
    /// How often the gateway's /metrics are read for the live view.
    #[serde(with = "humantime_serde")]
    pub metrics_interval: Duration,
    /// How many metric samples the live view keeps.
    pub metrics_samples: usize,
    /// When repeated failed sign-ins lock a name.
    pub sign_in_limit: SignInLimit,
}

/// After `failures` failed sign-ins in a row for one name, that name is refused (HTTP
/// 429, with `Retry-After`) for `lockout`, doubled with each further failure up to
/// `max_lockout`. A successful sign-in clears the count. `failures: 0` turns it off.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignInLimit {
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    pub lockout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_lockout: Duration,
}

impl Default for SignInLimit {
    fn default() -> Self {
        SignInLimit {
            failures: 5,
            lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(15 * 60),
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            listen: "127.0.0.1:8000".into(),
            gateway: "http://127.0.0.1:8080".into(),
            chainstore: "http://127.0.0.1:7070".into(),
            users: Vec::new(),
            tokens: Vec::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookies: true,
            max_body_bytes: 16 << 20,
            metrics_interval: Duration::from_secs(2),
            metrics_samples: 150,
            sign_in_limit: SignInLimit::default(),
        }
    }
}

/// A person with a password, stored as an argon2 PHC string (`sekisho ui hash-password`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub password_hash: String,
    pub role: Role,
}

/// A bearer token, stored as the hex SHA-256 of the token (`printf %s TOKEN | sha256sum`),
/// so that the configuration does not hold the secret itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub sha256: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
#[error("edge configuration: {0}")]
pub struct ConfigError(pub String);

impl EdgeConfig {
    /// Reads a YAML or TOML file (optional), then `SEKISHO_UI__*` variables.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(p) = path {
            b = b.add_source(config::File::from(p));
        }
        b = b.add_source(
            config::Environment::with_prefix("SEKISHO_UI")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let cfg: EdgeConfig = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        for (what, url) in [("gateway", &self.gateway), ("chainstore", &self.chainstore)] {
            match url.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {}
                _ => return bad(format!("{what}: `{url}` is not an http://host:port URL")),
            }
        }
        for u in &self.users {
            if u.name.is_empty() {
                return bad("users: a user has no name".into());
            }
            if argon2::PasswordHash::new(&u.password_hash).is_err() {
                return bad(format!(
                    "users: `{}`: password_hash is not a PHC string (make one with `sekisho ui hash-password`)",
                    u.name
                ));
            }
        }
        for t in &self.tokens {
            if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "tokens: `{}`: sha256 must be 64 hex digits (printf %s TOKEN | sha256sum)",
                    t.name
                ));
            }
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes: must be at least 1024".into());
        }
        if self.metrics_samples == 0 || self.metrics_interval.is_zero() {
            return bad("metrics_samples and metrics_interval must be above zero".into());
        }
        Ok(())
    }
}
