//! Discovery finds filter endpoints. Each source sits behind one trait and yields, as a
//! stream, the endpoints it knows; several sources run at once and the registry joins
//! what they say. Sources: [`listed`] (the configuration's `filters:`), [`file`] (a
//! watched file), [`etcd`] (replicas register themselves under a key prefix), [`dns`]
//! (names re-resolved: A/AAAA or SRV, as Kubernetes headless Services publish them),
//! [`kubernetes`] (ready pods annotated `sekisho.io/filter`, watched through the API).
//!
//! A source never decides whether an endpoint is fit for traffic: the registry asks each
//! new endpoint `Describe` and watches its health before it sends it anything.

pub mod dns;
pub mod etcd;
pub mod file;
pub mod kubernetes;
pub mod listed;

use futures::stream::BoxStream;

/// One endpoint of a filter, as a source found it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FoundEndpoint {
    pub filter: String,
    /// `http://host:port`.
    pub address: String,
}

/// What a source says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// Every endpoint the source knows now; it replaces what the source said before.
    Endpoints(Vec<FoundEndpoint>),
    /// The source cannot be read now (etcd away, file unreadable). What it said last
    /// stays in use until it speaks again.
    Trouble(String),
}

/// A source of filter endpoints.
pub trait Discovery: Send {
    /// What the endpoint list shows as its source: `static`, `file`, `etcd`, ...
    fn kind(&self) -> &'static str;

    /// The source's endpoints as they change. The stream may never end; if it does, the
    /// last list it gave stays in use.
    fn watch(self: Box<Self>) -> BoxStream<'static, SourceEvent>;
}

/// Reports each problem once per source until it clears, for sources that re-read.
#[derive(Debug, Default)]
pub(crate) struct ReportOnce {
    reported: std::collections::BTreeSet<String>,
}

impl ReportOnce {
    /// True the first time `problem` is seen since the last [`ReportOnce::keep_only`].
    pub fn first(&mut self, problem: &str) -> bool {
        self.reported.insert(problem.to_owned())
    }

    /// Forgets problems not in `current`, so that they are reported again if they return.
    pub fn keep_only(&mut self, current: &[String]) {
        self.reported.retain(|p| current.contains(p));
    }
}
