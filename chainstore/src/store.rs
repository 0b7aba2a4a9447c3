//! Where chains are kept: one trait, [`ChainStorage`], and one SQL implementation,
//! [`SqlStore`], for SQLite (the embedded default) and PostgreSQL, through sqlx's `Any`
//! driver and one SQL dialect.
//!
//! Every write (create, update, delete, rollback) is a new version and takes the next
//! store *revision*. Writers first bump the revision row, whose lock serializes them, so
//! revisions commit in order: a watcher that asks for everything after revision `n`
//! never misses a change and never sees one twice. On PostgreSQL every write also sends
//! a NOTIFY, so that watchers on every replica wake at once.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::watch;

/// The PostgreSQL channel writes are announced on, with the revision as payload.
const NOTIFY_CHANNEL: &str = "sekisho_chains";

/// Migrations, applied in order at start-up and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/0001_chains.sql"))];

/// One stored version of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChain {
    pub name: String,
    pub version: u64,
    pub document: String,
    pub author: String,
    pub comment: String,
    /// Seconds since the Unix epoch.
    pub updated_at: i64,
    /// A delete is a version too; history is kept.
    pub deleted: bool,
    pub revision: u64,
}

/// What a write expects to find, so that a stale write is refused, never merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    /// No live chain of that name (create).
    Absent,
    /// The current version is this one (update, delete, rollback).
    Version(u64),
}

/// A write: a new document, or a delete when `document` is `None`.
#[derive(Debug, Clone)]
pub struct Write {
    pub name: String,
    pub document: Option<String>,
    pub expect: Expect,
    pub author: String,
    pub comment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chain `{0}` does not exist")]
    NotFound(String),
    #[error("chain `{name}` version {version} does not exist")]
    NoSuchVersion { name: String, version: u64 },
    #[error("chain `{0}` already exists; update it with its current version")]
    AlreadyExists(String),
    #[error(
        "chain `{name}` is at version {current}, not {expected}: reload it and apply your change again"
    )]
    Conflict {
        name: String,
        expected: u64,
        current: u64,
    },
    #[error("database: {0}")]
    Db(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(e.to_string())
    }
}

/// Storage for chains. Implementations keep every version.
#[async_trait]
pub trait ChainStorage: Send + Sync + 'static {
    async fn write(&self, w: Write) -> Result<StoredChain, StoreError>;
    /// The current version (`None`) or a given one; deleted chains are `NotFound` unless a
    /// version is asked for.
    async fn get(&self, name: &str, version: Option<u64>) -> Result<StoredChain, StoreError>;
    /// Live chains, by name.
    async fn list(&self) -> Result<Vec<StoredChain>, StoreError>;
    /// Every version of a chain, oldest first.
    async fn versions(&self, name: &str) -> Result<Vec<StoredChain>, StoreError>;
    /// Changes after `revision`, in order, at most `limit`.
    async fn changes_since(
        &self,
        revision: u64,
        limit: u32,
    ) -> Result<Vec<StoredChain>, StoreError>;
    /// The latest revision known to be committed: after each write through this store,
    /// and (PostgreSQL) when another replica announces one.
    fn committed(&self) -> watch::Receiver<u64>;
}

/// SQLite (`sqlite://path?mode=rwc`) or PostgreSQL (`postgres://...`).
pub struct SqlStore {
    pool: AnyPool,
    committed: Arc<watch::Sender<u64>>,
    postgres: bool,
}

impl SqlStore {
    /// Connects and runs the migrations not yet applied.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = AnyPoolOptions::new()
            // SQLite has one writer at a time anyway; one connection avoids SQLITE_BUSY.
            .max_connections(if sqlite { 1 } else { 8 })
            .connect(url)
            .await?;
        let store = SqlStore {
            pool,
            committed: Arc::new(watch::channel(0).0),
            postgres: !sqlite,
        };
        store.migrate(!sqlite).await?;
        if store.postgres {
            let mut listener = sqlx::postgres::PgListener::connect(url).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            tokio::spawn(listen(listener, Arc::downgrade(&store.committed)));
        }
        let rev = store.revision().await?;
        advance(&store.committed, rev);
        Ok(store)
    }

    /// Applies pending migrations. On PostgreSQL, replicas starting together take turns
    /// through an advisory lock: concurrent `CREATE TABLE IF NOT EXISTS` can fail there.
    async fn migrate(&self, postgres: bool) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if postgres {
            sqlx::query("SELECT pg_advisory_lock(7393001)")
                .execute(&mut *conn)
                .await?;
        }
        let result = Self::migrate_on(&mut conn).await;
        if postgres {
            sqlx::query("SELECT pg_advisory_unlock(7393001)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    async fn migrate_on(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
        sqlx::raw_sql("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .execute(&mut *conn)
            .await?;
        for (version, sql) in MIGRATIONS {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if done.is_none() {
                sqlx::raw_sql(sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                    .bind(*version)
                    .execute(&mut *tx)
                    .await?;
                tracing::info!(version, "chainstore migration applied");
            }
            tx.commit().await?;
        }
        Ok(())
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let r: i64 = sqlx::query_scalar("SELECT revision FROM store_meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(r as u64)
    }
}

const COLUMNS: &str = "name, version, document, author, comment, updated_at, deleted, revision";

fn row(r: &AnyRow) -> Result<StoredChain, StoreError> {
    Ok(StoredChain {
        name: r.try_get("name")?,
        version: r.try_get::<i64, _>("version")? as u64,
        document: r.try_get("document")?,
        author: r.try_get("author")?,
        comment: r.try_get("comment")?,
        updated_at: r.try_get("updated_at")?,
        deleted: r.try_get::<i64, _>("deleted")? != 0,
        revision: r.try_get::<i64, _>("revision")? as u64,
    })
}

#[async_trait]
impl ChainStorage for SqlStore {
    async fn write(&self, w: Write) -> Result<StoredChain, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Taking the next revision first locks the row until commit: writers queue here.
        let revision: i64 = sqlx::query_scalar(
            "UPDATE store_meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await?;
        let current: Option<(i64, i64)> =
            sqlx::query_as("SELECT version, deleted FROM chains WHERE name = $1")
                .bind(&w.name)
                .fetch_optional(&mut *tx)
                .await?;
        let live = current
            .filter(|(_, deleted)| *deleted == 0)
            .map(|(v, _)| v as u64);
        let last = current.map(|(v, _)| v as u64).unwrap_or(0);
        match (w.expect, live) {
            (Expect::Absent, Some(_)) => return Err(StoreError::AlreadyExists(w.name)),
            (Expect::Version(_), None) => return Err(StoreError::NotFound(w.name)),
            (Expect::Version(e), Some(c)) if e != c => {
                return Err(StoreError::Conflict {
                    name: w.name,
                    expected: e,
                    current: c,
                });
            }
            _ => {}
        }
        let version = last + 1;
        let deleted = w.document.is_none();
        let document = match w.document {
            Some(d) => d,
            // A delete keeps the last document, so history shows what was removed.
            None => {
                sqlx::query_scalar(
                    "SELECT document FROM chain_versions WHERE name = $1 AND version = $2",
                )
                .bind(&w.name)
                .bind(last as i64)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        sqlx::query(&format!(
            "INSERT INTO chain_versions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&w.name)
        .bind(version as i64)
        .bind(&document)
        .bind(&w.author)
        .bind(&w.comment)
        .bind(now)
        .bind(deleted as i64)
        .bind(revision)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO chains (name, version, deleted) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, deleted = excluded.deleted",
        )
        .bind(&w.name)
        .bind(version as i64)
        .bind(deleted as i64)
        .execute(&mut *tx)
        .await?;
        if self.postgres {
            // Delivered when the transaction commits, to every replica listening.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        advance(&self.committed, revision as u64);
        Ok(StoredChain {
            name: w.name,
            version,
            document,
            author: w.author,
            comment: w.comment,
            updated_at: now,
            deleted,
            revision: revision as u64,
        })
    }

    async fn get(&self, name: &str, version: Option<u64>) -> Result<StoredChain, StoreError> {
        let found = match version {
            None => {
                sqlx::query(&format!(
                    "SELECT {} FROM chain_versions v JOIN chains c ON c.name = v.name AND c.version = v.version \
                     WHERE v.name = $1 AND c.deleted = 0",
                    prefixed("v")
                ))
                .bind(name)
                .fetch_optional(&self.pool)
                .await?
            }
            Some(v) => {
                sqlx::query(&format!("SELECT {COLUMNS} FROM chain_versions WHERE name = $1 AND version = $2"))
                    .bind(name)
                    .bind(v as i64)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        match (found, version) {
            (Some(r), _) => row(&r),
            (None, None) => Err(StoreError::NotFound(name.to_owned())),
            (None, Some(v)) => Err(StoreError::NoSuchVersion {
                name: name.to_owned(),
                version: v,
            }),
        }
    }

    async fn list(&self) -> Result<Vec<StoredChain>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM chain_versions v JOIN chains c ON c.name = v.name AND c.version = v.version \
             WHERE c.deleted = 0 ORDER BY v.name",
            prefixed("v")
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }

    async fn versions(&self, name: &str) -> Result<Vec<StoredChain>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM chain_versions WHERE name = $1 ORDER BY version"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        rows.iter().map(row).collect()
    }

    async fn changes_since(
        &self,
        revision: u64,
        limit: u32,
    ) -> Result<Vec<StoredChain>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM chain_versions WHERE revision > $1 ORDER BY revision LIMIT $2"
        ))
        .bind(revision as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

/// Raises the known committed revision; never lowers it.
fn advance(committed: &watch::Sender<u64>, revision: u64) {
    committed.send_if_modified(|r| {
        let newer = revision > *r;
        if newer {
            *r = revision;
        }
        newer
    });
}

/// Turns other replicas' NOTIFYs into revisions, until the store is dropped. A dropped
/// connection is re-established by sqlx; announcements missed meanwhile are caught by
/// the watchers' polling.
async fn listen(mut listener: sqlx::postgres::PgListener, committed: Weak<watch::Sender<u64>>) {
    loop {
        match listener.recv().await {
            Ok(n) => {
                let Some(committed) = committed.upgrade() else {
                    return;
                };
                if let Ok(rev) = n.payload().parse::<u64>() {
                    advance(&committed, rev);
                }
            }
            Err(e) => {
                if committed.upgrade().is_none() {
                    return;
                }
                tracing::warn!(error = %e, "chainstore: LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn prefixed(table: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{table}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}
