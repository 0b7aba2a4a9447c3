//! Who is calling and what they may do. Operators sign in with a password (a session
//! cookie) or send a bearer token; services send a bearer token. The rules:
//!
//! | request                                        | viewer | operator | service |
//! |------------------------------------------------|--------|----------|---------|
//! | moderate (JSON or gRPC)                        |        | yes      | yes     |
//! | read chains, versions, filters, validate, live | yes    | yes      |         |
//! | create, update, delete, roll back chains       |        | yes      |         |
//!
//! Anything else under `/api/` is refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{SignInLimit, TokenEntry, UserEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads chains, history, filters and the live view.
    Viewer,
    /// A viewer who may also change chains and try items.
    Operator,
    /// A calling service: moderate only.
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Moderate an item.
    Moderate,
    /// Read state.
    Read,
    /// Change chains.
    Write,
    /// Nobody may.
    Nothing,
}

impl Need {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Need::Moderate => matches!(role, Role::Operator | Role::Service),
            Need::Read => matches!(role, Role::Operator | Role::Viewer),
            Need::Write => role == Role::Operator,
            Need::Nothing => false,
        }
    }
}

/// What a JSON request to `upstream` (`gateway` or `chainstore`) at `path` (after the
/// upstream's prefix) needs.
pub fn need_json(upstream: &str, method: &http::Method, path: &str) -> Need {
    let read = method == http::Method::GET || method == http::Method::HEAD;
    match upstream {
        "gateway" => {
            if method == http::Method::POST
                && path.starts_with("/v1/chains/")
                && path.ends_with(":moderate")
            {
                Need::Moderate
            } else if read
                && (path == "/v1/filters"
                    || path == "/v1/gateway/chains"
                    || path == "/openapi.json")
            {
                Need::Read
            } else {
                Need::Nothing
            }
        }
        "chainstore" => {
            let validate = method == http::Method::POST && path == "/v1/chains:validate";
            if validate || (read && (path.starts_with("/v1/chains") || path == "/openapi.json")) {
                Need::Read
            } else if path.starts_with("/v1/chains")
                && matches!(
                    *method,
                    http::Method::POST | http::Method::PUT | http::Method::DELETE
                )
            {
                Need::Write
            } else {
                Need::Nothing
            }
        }
        _ => Need::Nothing,
    }
}

/// What a gRPC call to `path` (`/package.Service/Method`) needs, and which upstream
/// serves it.
pub fn need_grpc(path: &str) -> (Need, Option<&'static str>) {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return (Need::Nothing, None);
    };
    match service {
        "sekisho.gateway.v1.Gateway" => match method {
            "Moderate" | "ModerateStream" => (Need::Moderate, Some("gateway")),
            "ListFilters" | "ListChains" => (Need::Read, Some("gateway")),
            _ => (Need::Nothing, None),
        },
        "sekisho.chainstore.v1.ChainStore" => match method {
            "GetChain" | "ListChains" | "ListVersions" | "ValidateChain" | "Watch" => {
                (Need::Read, Some("chainstore"))
            }
            "CreateChain" | "UpdateChain" | "DeleteChain" | "Rollback" => {
                (Need::Write, Some("chainstore"))
            }
            _ => (Need::Nothing, None),
        },
        _ => (Need::Nothing, None),
    }
}

/// The accounts the configuration names, and the sessions of those signed in.
pub struct Accounts {
    users: HashMap<String, UserEntry>,
    tokens: HashMap<[u8; 32], Principal>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    ttl: Duration,
    throttle: Throttle,
}

/// Why a sign-in was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInError {
    /// Wrong name or password (which of the two is not said).
    Wrong,
    /// Too many failures for this name: no password is checked until this has passed.
    Locked(Duration),
}

/// Failed sign-ins per name. After `limit.failures` failures in a row a name is locked
/// for `limit.lockout`, doubled with each further failure up to `limit.max_lockout`; a
/// success clears the count. Unknown names are counted the same way, so the answer does
/// not tell which names exist. Keyed by name, not by address: behind an ingress every
/// caller has the same address, and guessing one account's password is what this stops.
struct Throttle {
    limit: SignInLimit,
    names: Mutex<HashMap<String, Failures>>,
}

struct Failures {
    count: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// At most this many names with failures are remembered; the stalest go first.
const MAX_THROTTLED: usize = 10_000;

impl Throttle {
    fn locked(&self, name: &str, now: Instant) -> Option<Duration> {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names
            .get(name)
            .and_then(|f| f.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    fn failed(&self, name: &str, now: Instant) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() >= MAX_THROTTLED && !names.contains_key(name) {
            let forget = self.limit.max_lockout.max(self.limit.lockout);
            names.retain(|_, f| now.duration_since(f.last) < forget);
            if names.len() >= MAX_THROTTLED
                && let Some(stalest) = names
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
            {
                names.remove(&stalest);
            }
        }
        let f = names.entry(name.to_owned()).or_insert(Failures {
            count: 0,
            locked_until: None,
            last: now,
        });
        f.count = f.count.saturating_add(1);
        f.last = now;
        if self.limit.failures > 0 && f.count >= self.limit.failures {
            let doublings = (f.count - self.limit.failures).min(16);
            let lockout = self
                .limit
                .lockout
                .saturating_mul(1 << doublings)
                .min(self.limit.max_lockout.max(self.limit.lockout));
            f.locked_until = Some(now + lockout);
        }
    }

    fn succeeded(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.remove(name);
    }
}

struct Session {
    who: Principal,
    expires: Instant,
}

/// At most this many live sessions; the oldest go first.
const MAX_SESSIONS: usize = 10_000;

impl Accounts {
    pub fn new(
        users: &[UserEntry],
        tokens: &[TokenEntry],
        ttl: Duration,
        limit: SignInLimit,
    ) -> Self {
        Accounts {
            users: users.iter().map(|u| (u.name.clone(), u.clone())).collect(),
            tokens: tokens
                .iter()
                .filter_map(|t| {
                    let mut key = [0u8; 32];
                    decode_hex(&t.sha256, &mut key).then(|| {
                        (
                            key,
                            Principal {
                                name: t.name.clone(),
                                role: t.role,
                            },
                        )
                    })
                })
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            ttl,
            throttle: Throttle {
                limit,
                names: Mutex::new(HashMap::new()),
            },
        }
    }

    /// The principal a bearer token stands for. Tokens are looked up by their SHA-256,
    /// so the comparison never runs over the secret itself.
    pub fn token(&self, token: &str) -> Option<Principal> {
        self.tokens.get(&digest(token)).cloned()
    }

    /// Checks a password; argon2 is slow on purpose, so this runs off the async threads.
    /// A name locked after too many failures is refused before any password is checked.
    pub async fn sign_in(
        &self,
        name: &str,
        password: &str,
    ) -> Result<(String, Principal), SignInError> {
        if let Some(left) = self.throttle.locked(name, Instant::now()) {
            return Err(SignInError::Locked(left));
        }
        let user = self.users.get(name).cloned();
        // An unknown name spends the same time as a known one, so that timing does not
        // tell which names exist.
        let hash = user
            .as_ref()
            .map_or_else(dummy_hash, |u| u.password_hash.clone());
        let right = verify_password(hash, password.to_owned()).await;
        let Some(user) = user.filter(|_| right) else {
            self.throttle.failed(name, Instant::now());
            return Err(SignInError::Wrong);
        };
        self.throttle.succeeded(name);
        let who = Principal {
            name: user.name,
            role: user.role,
        };
        let mut id = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            digest(&id),
            Session {
                who: who.clone(),
                expires: now + self.ttl,
            },
        );
        Ok((id, who))
    }

    /// The principal a session cookie stands for, while it lasts.
    pub fn session(&self, id: &str) -> Option<Principal> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&digest(id))
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.who.clone())
    }

    pub fn sign_out(&self, id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&digest(id));
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// An argon2 hash of a random password nobody knows, for unknown user names.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password(&random_secret()).unwrap_or_default())
        .clone()
}

async fn verify_password(hash: String, password: String) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(&hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// An argon2id PHC string for `password`, for the configuration's `users`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    use argon2::password_hash::SaltString;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A fresh random secret (a token or a password), URL-safe.
pub fn random_secret() -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The hex SHA-256 of `s`, as the configuration's `tokens` hold it.
pub fn sha256_hex(s: &str) -> String {
    digest(s).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn decode_hex(s: &str, out: &mut [u8; 32]) -> bool {
    if s.len() != 64 {
        return false;
    }
    for (i, o) in out.iter_mut().enumerate() {
        match u8::from_str_radix(&s[2 * i..2 * i + 2], 16) {
            Ok(b) => *o = b,
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn the_rules_table_holds() {
        let m = |up, method, path| need_json(up, &method, path);
        assert_eq!(
            m("gateway", Method::POST, "/v1/chains/x:moderate"),
            Need::Moderate
        );
        assert_eq!(
            m("gateway", Method::GET, "/v1/chains/x:moderate"),
            Need::Nothing
        );
        assert_eq!(m("gateway", Method::GET, "/v1/filters"), Need::Read);
        assert_eq!(m("gateway", Method::GET, "/metrics"), Need::Nothing);
        assert_eq!(m("chainstore", Method::GET, "/v1/chains/x"), Need::Read);
        assert_eq!(
            m("chainstore", Method::GET, "/v1/chains/x/versions"),
            Need::Read
        );
        assert_eq!(
            m("chainstore", Method::POST, "/v1/chains:validate"),
            Need::Read
        );
        assert_eq!(m("chainstore", Method::PUT, "/v1/chains/x"), Need::Write);
        assert_eq!(m("chainstore", Method::POST, "/v1/chains"), Need::Write);
        assert_eq!(
            m("chainstore", Method::POST, "/v1/chains/x:rollback"),
            Need::Write
        );
        assert_eq!(m("chainstore", Method::DELETE, "/v1/chains/x"), Need::Write);
        assert_eq!(
            m("chainstore", Method::PATCH, "/v1/chains/x"),
            Need::Nothing
        );
        assert_eq!(m("elsewhere", Method::GET, "/v1/chains"), Need::Nothing);

        assert!(Need::Moderate.allows(Role::Service));
        assert!(Need::Moderate.allows(Role::Operator));
        assert!(!Need::Moderate.allows(Role::Viewer));
        assert!(!Need::Read.allows(Role::Service));
        assert!(!Need::Write.allows(Role::Viewer));
        assert!(Need::Write.allows(Role::Operator));
        assert!(!Need::Nothing.allows(Role::Operator));

        assert_eq!(
            need_grpc("/sekisho.gateway.v1.Gateway/Moderate"),
            (Need::Moderate, Some("gateway"))
        );
        assert_eq!(
            need_grpc("/sekisho.chainstore.v1.ChainStore/UpdateChain"),
            (Need::Write, Some("chainstore"))
        );
        assert_eq!(need_grpc("/grpc.health.v1.Health/Check").0, Need::Nothing);
        assert_eq!(need_grpc("nonsense").0, Need::Nothing);
    }

    #[tokio::test]
    async fn passwords_tokens_and_sessions() {
        let users = vec![UserEntry {
            name: "ana".into(),
            password_hash: hash_password("s3cret").unwrap(),
            role: Role::Operator,
        }];
        let tokens = vec![TokenEntry {
            name: "svc".into(),
            sha256: sha256_hex("tok"),
            role: Role::Service,
        }];
        let a = Accounts::new(&users, &tokens, Duration::from_secs(60), limit(5));
        assert_eq!(a.sign_in("ana", "wrong").await, Err(SignInError::Wrong));
        assert_eq!(a.sign_in("bob", "s3cret").await, Err(SignInError::Wrong));
        let (id, who) = a.sign_in("ana", "s3cret").await.unwrap();
        assert_eq!(who.role, Role::Operator);
        assert_eq!(a.session(&id), Some(who));
        assert!(a.session("not-a-session").is_none());
        a.sign_out(&id);
        assert!(a.session(&id).is_none());
        assert_eq!(a.token("tok").unwrap().role, Role::Service);
        assert!(a.token("tok2").is_none());

        let short = Accounts::new(&users, &tokens, Duration::ZERO, limit(5));
        let (id, _) = short.sign_in("ana", "s3cret").await.unwrap();
        assert!(
            short.session(&id).is_none(),
            "an expired session is refused"
        );
    }

    fn limit(failures: u32) -> SignInLimit {
        SignInLimit {
            failures,
            lockout: Duration::from_secs(30),
            max_lockout: Duration::from_secs(120),
        }
    }

    #[tokio::test]
    async fn repeated_failures_lock_a_name_and_the_lock_grows() {
        let users = vec![UserEntry {
            name: "ana".into(),
            password_hash: hash_password("s3cret").unwrap(),
            role: Role::Operator,
        }];
        let a = Accounts::new(&users, &[], Duration::from_secs(60), limit(3));
        for _ in 0..3 {
            assert_eq!(a.sign_in("ana", "guess").await, Err(SignInError::Wrong));
        }
        match a.sign_in("ana", "s3cret").await {
            Err(SignInError::Locked(left)) => assert!(left <= Duration::from_secs(30)),
            other => panic!("the right password while locked: {other:?}"),
        }
        // Other names are not held back; unknown names are counted like known ones.
        assert_eq!(a.sign_in("bob", "x").await, Err(SignInError::Wrong));

        // Each further failure doubles the lockout, up to the cap.
        let t = &a.throttle;
        let now = Instant::now();
        let lock = |name: &str| t.locked(name, now).unwrap_or_default();
        for (failures, want) in [(3, 30), (4, 60), (5, 120), (6, 120)] {
            t.names.lock().unwrap().clear();
            for _ in 0..failures {
                t.failed("carl", now);
            }
            assert_eq!(
                lock("carl"),
                Duration::from_secs(want),
                "{failures} failures"
            );
        }
        assert!(t.locked("carl", now + Duration::from_secs(121)).is_none());

        // A success clears the count: the lock is gone once it has passed, and then
        // the next failure starts from zero.
        t.names.lock().unwrap().clear();
        t.failed("ana", now);
        t.failed("ana", now);
        assert!(a.sign_in("ana", "s3cret").await.is_ok());
        t.failed("ana", now);
        assert!(t.locked("ana", now).is_none(), "the count started again");
    }

    #[test]
    fn the_throttle_remembers_a_bounded_number_of_names() {
        let t = Throttle {
            limit: limit(3),
            names: Mutex::new(HashMap::new()),
        };
        let now = Instant::now();
        for i in 0..MAX_THROTTLED + 50 {
            t.failed(&format!("name-{i}"), now + Duration::from_millis(i as u64));
        }
        let names = t.names.lock().unwrap();
        assert_eq!(names.len(), MAX_THROTTLED);
        assert!(!names.contains_key("name-0"), "the stalest went first");
        assert!(names.contains_key(&format!("name-{}", MAX_THROTTLED + 49)));
    }
}
