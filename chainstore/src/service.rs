//! The `sekisho.chainstore.v1.ChainStore` gRPC service: every write is parsed and
//! validated first, carries the version it expects, and becomes a new version; `Watch`
//! streams the change feed from any revision.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use sekisho_proto::chainstore::v1::{self as proto, chain_store_server::ChainStore};
use tonic::{Request, Response, Status};

use crate::catalog::GatewayCatalog;
use crate::store::{ChainStorage, Expect, StoreError, StoredChain, Write};
use crate::{Limits, parse_chain, validate};

/// How often a watcher looks for changes anyway. Writes through this process, and on
/// PostgreSQL other replicas' writes (NOTIFY), wake it at once; the poll catches
/// announcements missed while the LISTEN connection was being re-established.
const POLL: Duration = Duration::from_millis(500);
const PAGE: u32 = 500;

pub struct ChainStoreService {
    store: Arc<dyn ChainStorage>,
    limits: Limits,
    catalog: Option<Arc<GatewayCatalog>>,
    /// Turns true when the server shuts down: `Watch` streams end then, since a gateway's
    /// never ends on its own and a graceful shutdown would wait for it for ever.
    closing: Option<tokio::sync::watch::Receiver<bool>>,
}

/// What a check found: problems refuse the write; warnings are checks not made.
struct Checked {
    name: Option<String>,
    problems: Vec<proto::ValidationProblem>,
    warnings: Vec<proto::ValidationProblem>,
}

/// Whether a write is checked against discovery too. A rollback is not: it restores a
/// version that was accepted once, and must work in an emergency even when a filter is
/// away.
#[derive(Clone, Copy, PartialEq)]
enum Against {
    Discovery,
    StructureOnly,
}

fn problem(path: String, message: String) -> proto::ValidationProblem {
    proto::ValidationProblem {
        path,
        message,
        line: 0,
        column: 0,
    }
}

impl ChainStoreService {
    pub fn new(store: Arc<dyn ChainStorage>) -> Self {
        ChainStoreService {
            store,
            limits: Limits::default(),
            catalog: None,
            closing: None,
        }
    }

    /// Ends the `Watch` streams when `closing` turns true (see [`crate::server::serve`]).
    pub fn closing_on(mut self, closing: tokio::sync::watch::Receiver<bool>) -> Self {
        self.closing = Some(closing);
        self
    }

    /// Checks filters against what a gateway's discovery reports.
    pub fn with_catalog(mut self, catalog: Arc<GatewayCatalog>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Parses and validates a document.
    async fn check(&self, document: &str, against: Against) -> Checked {
        let spec = match parse_chain(document) {
            Ok(s) => s,
            Err(e) => {
                return Checked {
                    name: None,
                    problems: vec![proto::ValidationProblem {
                        path: String::new(),
                        message: e.message,
                        line: e.line.unwrap_or(0) as u32,
                        column: e.column.unwrap_or(0) as u32,
                    }],
                    warnings: vec![],
                };
            }
        };
        let mut problems: Vec<_> = validate(&spec, &self.limits)
            .into_iter()
            .map(|p| problem(p.path, p.message))
            .collect();
        let mut warnings = vec![];
        if let (Some(catalog), Against::Discovery) = (&self.catalog, against) {
            match catalog.current().await {
                Ok(c) => problems.extend(
                    c.check(&spec)
                        .into_iter()
                        .map(|p| problem(p.path, p.message)),
                ),
                Err(why) => warnings.push(problem(String::new(), why)),
            }
        }
        Checked {
            name: Some(spec.name),
            problems,
            warnings,
        }
    }

    /// The chain's name, or INVALID_ARGUMENT listing every problem.
    async fn checked(&self, document: &str, against: Against) -> Result<String, Status> {
        let c = self.check(document, against).await;
        for w in &c.warnings {
            tracing::warn!(warning = %w.message, "chain written without this check");
        }
        match c.name {
            Some(name) if c.problems.is_empty() => Ok(name),
            _ => {
                let text: Vec<String> = c
                    .problems
                    .iter()
                    .map(|p| match (p.path.is_empty(), p.line) {
                        (_, l) if l > 0 => format!("line {l} column {}: {}", p.column, p.message),
                        (true, _) => p.message.clone(),
                        (false, _) => format!("{}: {}", p.path, p.message),
                    })
                    .collect();
                Err(Status::invalid_argument(format!(
                    "the chain is not valid: {}",
                    text.join("; ")
                )))
            }
        }
    }
}

/// The one mapping from storage errors to gRPC statuses.
fn status(e: StoreError) -> Status {
    let message = e.to_string();
    match e {
        StoreError::NotFound(_) | StoreError::NoSuchVersion { .. } => Status::not_found(message),
        StoreError::AlreadyExists(_) => Status::already_exists(message),
        StoreError::Conflict { .. } => Status::aborted(message),
        StoreError::Db(_) => Status::unavailable(message),
    }
}

fn to_proto(c: StoredChain) -> proto::Chain {
    proto::Chain {
        name: c.name,
        version: c.version,
        document: c.document,
        author: c.author,
        comment: c.comment,
        updated_at: c.updated_at,
        deleted: c.deleted,
    }
}

/// Resolves once `closing` turns true; never without a closing signal, or once its
/// sender is gone (a receiver whose sender was dropped would otherwise answer at once
/// and end every watch).
async fn closing_time(closing: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(rx) = closing
        && rx.wait_for(|c| *c).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

fn expected(v: u64) -> Result<Expect, Status> {
    if v == 0 {
        Err(Status::invalid_argument(
            "expected_version: give the version you read, so a concurrent change is not overwritten",
        ))
    } else {
        Ok(Expect::Version(v))
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ChainStore for ChainStoreService {
    async fn create_chain(
        &self,
        r: Request<proto::CreateChainRequest>,
    ) -> Result<Response<proto::Chain>, Status> {
        let r = r.into_inner();
        let name = self.checked(&r.document, Against::Discovery).await?;
        let c = self
            .store
            .write(Write {
                name,
                document: Some(r.document),
                expect: Expect::Absent,
                author: r.author,
                comment: r.comment,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(c)))
    }

    async fn get_chain(
        &self,
        r: Request<proto::GetChainRequest>,
    ) -> Result<Response<proto::Chain>, Status> {
        let r = r.into_inner();
        let version = (r.version > 0).then_some(r.version);
        let c = self.store.get(&r.name, version).await.map_err(status)?;
        Ok(Response::new(to_proto(c)))
    }

    async fn list_chains(
        &self,
        _: Request<proto::ListChainsRequest>,
    ) -> Result<Response<proto::ListChainsResponse>, Status> {
        let chains = self.store.list().await.map_err(status)?;
        Ok(Response::new(proto::ListChainsResponse {
            chains: chains.into_iter().map(to_proto).collect(),
        }))
    }

    async fn update_chain(
        &self,
        r: Request<proto::UpdateChainRequest>,
    ) -> Result<Response<proto::Chain>, Status> {
        let r = r.into_inner();
        let expect = expected(r.expected_version)?;
        let name = self.checked(&r.document, Against::Discovery).await?;
        if name != r.name {
            return Err(Status::invalid_argument(format!(
                "the document names chain `{name}`, not `{}`; a chain is renamed by creating the new one and deleting the old",
                r.name
            )));
        }
        let c = self
            .store
            .write(Write {
                name,
                document: Some(r.document),
                expect,
                author: r.author,
                comment: r.comment,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(c)))
    }

    async fn delete_chain(
        &self,
        r: Request<proto::DeleteChainRequest>,
    ) -> Result<Response<proto::DeleteChainResponse>, Status> {
        let r = r.into_inner();
        let expect = expected(r.expected_version)?;
        self.store
            .write(Write {
                name: r.name,
                document: None,
                expect,
                author: String::new(),
                comment: "deleted".into(),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteChainResponse {}))
    }

    async fn validate_chain(
        &self,
        r: Request<proto::ValidateChainRequest>,
    ) -> Result<Response<proto::ValidateChainResponse>, Status> {
        let c = self
            .check(&r.into_inner().document, Against::Discovery)
            .await;
        Ok(Response::new(proto::ValidateChainResponse {
            valid: c.problems.is_empty(),
            problems: c.problems,
            warnings: c.warnings,
        }))
    }

    async fn list_versions(
        &self,
        r: Request<proto::ListVersionsRequest>,
    ) -> Result<Response<proto::ListVersionsResponse>, Status> {
        let versions = self
            .store
            .versions(&r.into_inner().name)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::ListVersionsResponse {
            versions: versions.into_iter().map(to_proto).collect(),
        }))
    }

    /// A rollback is a new version carrying an earlier version's document.
    async fn rollback(
        &self,
        r: Request<proto::RollbackRequest>,
    ) -> Result<Response<proto::Chain>, Status> {
        let r = r.into_inner();
        let expect = expected(r.expected_version)?;
        let old = self
            .store
            .get(&r.name, Some(r.to_version))
            .await
            .map_err(status)?;
        self.checked(&old.document, Against::StructureOnly).await?;
        let c = self
            .store
            .write(Write {
                name: r.name,
                document: Some(old.document),
                expect,
                author: r.author,
                comment: format!("rollback to version {}", r.to_version),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(c)))
    }

    type WatchStream = WatchStream;

    /// Every change after `from_revision`, in order, then changes as they are committed.
    /// From 0 the whole history is replayed, so a new watcher ends in the current state.
    async fn watch(
        &self,
        r: Request<proto::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let store = self.store.clone();
        let mut closing = self.closing.clone();
        let mut last = r.into_inner().from_revision;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut committed = store.committed();
            loop {
                let batch = match store.changes_since(last, PAGE).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                let full = batch.len() == PAGE as usize;
                for c in batch {
                    last = c.revision;
                    let kind = if c.deleted {
                        proto::watch_event::Kind::Delete
                    } else {
                        proto::watch_event::Kind::Put
                    };
                    let event = proto::WatchEvent {
                        kind: kind as i32,
                        revision: c.revision,
                        chain: Some(to_proto(c)),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the watcher went away
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    _ = committed.changed() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = tx.closed() => return,
                    // Shutting down: the stream ends, and the watcher reconnects elsewhere.
                    () = closing_time(&mut closing) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
