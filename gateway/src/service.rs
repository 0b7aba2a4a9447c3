//! The `sekisho.gateway.v1.Gateway` gRPC service: checks the request, sheds load, picks
//! the chain version the request will run on, and hands it to the chain runner.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::{Stream, StreamExt};
use sekisho_chainstore::MAX_METADATA_ENTRIES;
use sekisho_proto::filter::v1::content::Payload;
use sekisho_proto::gateway::v1::{
    self as gproto, ModerateRequest, ModerateResponse, gateway_server::Gateway,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tonic::{Request, Response, Status, Streaming};

use crate::callers::Callers;
use crate::chain::{ChainSet, Chains};
use crate::config::CallersConfig;
use crate::error::GatewayError;
use crate::metrics as m;
use crate::runner::{Item, Runner};

/// What a request over its caller's own limits meets: a unary call is shed; a stream's
/// request waits, so that a stream is slowed, not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Shed,
    Wait,
}

/// Requests a stream may have in flight at once (responses keep request order).
const STREAM_WINDOW: usize = 64;

/// The most bytes of keys and values a request's `metadata` may hold: caller facts
/// (a tier, a country), passed to every filter call and, for rules that read it, turned
/// into a CEL map on each request.
const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Refuses metadata over [`MAX_METADATA_ENTRIES`] entries (what rules' cost estimates
/// count on) or [`MAX_METADATA_BYTES`].
fn check_metadata(metadata: &HashMap<String, String>) -> Result<(), GatewayError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(GatewayError::InvalidArgument(format!(
            "metadata: {} entries; the limit is {MAX_METADATA_ENTRIES}",
            metadata.len()
        )));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(GatewayError::InvalidArgument(format!(
            "metadata: {bytes} bytes of keys and values; the limit is {MAX_METADATA_BYTES}"
        )));
    }
    Ok(())
}

/// The gateway-wide `max_in_flight` places. A unary call takes one or is shed; a stream's
/// request waits for one. Waiters do not queue on the semaphore (a queue would hand every
/// freed place to a waiting stream and shed every unary call meanwhile): each freed place
/// wakes one of them to try for it, as a new unary call would.
#[derive(Clone)]
struct Places {
    semaphore: Arc<Semaphore>,
    freed: Arc<Notify>,
}

/// A place, held while its request runs; given back (and a waiter woken) when dropped.
struct Place {
    permit: Option<OwnedSemaphorePermit>,
    freed: Arc<Notify>,
}

impl Drop for Place {
    fn drop(&mut self) {
        // The place first, then the wake-up: the woken waiter must find it free.
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

impl Places {
    fn new(n: usize) -> Self {
        Places {
            semaphore: Arc::new(Semaphore::new(n)),
            freed: Arc::new(Notify::new()),
        }
    }

    fn take(&self) -> Option<Place> {
        let permit = self.semaphore.clone().try_acquire_owned().ok()?;
        Some(Place {
            permit: Some(permit),
            freed: self.freed.clone(),
        })
    }

    async fn wait(&self) -> Place {
        let mut counted = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the try, so a place freed in between still wakes it.
            freed.as_mut().enable();
            if let Some(place) = self.take() {
                return place;
            }
            if !counted {
                counted = true;
                metrics::counter!(m::STREAM_WAITS_TOTAL).increment(1);
            }
            freed.await;
        }
    }
}

#[derive(Clone)]
pub struct GatewayService {
    chains: Arc<Chains>,
    runner: Runner,
    places: Places,
    max_in_flight: usize,
    callers: Arc<Callers>,
    closing: Option<watch::Receiver<bool>>,
}

impl GatewayService {
    pub fn new(chains: Arc<Chains>, runner: Runner, max_in_flight: usize) -> Self {
        GatewayService {
            chains,
            runner,
            places: Places::new(max_in_flight),
            max_in_flight,
            callers: Arc::new(Callers::new(&CallersConfig::default())),
            closing: None,
        }
    }

    /// Sheds a caller's requests over its own limits (see [`crate::callers`]).
    pub fn with_callers(mut self, callers: Callers) -> Self {
        self.callers = Arc::new(callers);
        self
    }

    /// Ends the `ModerateStream` streams when `closing` turns true (the server's
    /// shutdown): a stream's client may hold it open for ever, and graceful shutdown
    /// waits for every stream to end.
    pub fn closing_on(mut self, closing: watch::Receiver<bool>) -> Self {
        self.closing = Some(closing);
        self
    }

    /// Runs one request of `caller`, with its metrics; `deadline` is the caller's
    /// (`grpc-timeout`), if it gave one.
    pub async fn moderate_one(
        &self,
        req: ModerateRequest,
        deadline: Option<Instant>,
        caller: &str,
        admission: Admission,
    ) -> Result<ModerateResponse, Status> {
        let start = Instant::now();
        let chain_label = req.chain.clone();
        // The chains as they are now: the request runs on this version of its chain.
        let set = self.chains.snapshot();
        let result = self
            .moderate_inner(req, &set, deadline, caller, admission)
            .await;
        // Only a chain this gateway serves names a series: a name it does not know (an
        // unknown chain, or any name on a request refused before the chain was looked
        // up) shares `unknown`, so that callers cannot grow the series.
        let chain_label = if set.chains.contains_key(&chain_label) {
            chain_label
        } else {
            "unknown".to_owned()
        };
        let code = match &result {
            Ok(_) => "ok",
            Err(GatewayError::InvalidArgument(_)) => "invalid_argument",
            Err(GatewayError::NotFound(_)) => "not_found",
            Err(GatewayError::Overloaded { .. }) => "resource_exhausted",
            Err(GatewayError::Unavailable(_)) => "unavailable",
            Err(GatewayError::FilterFailed { status, .. }) => {
                sekisho_proto::code_label(status.code())
            }
            Err(_) => "internal",
        };
        metrics::counter!(m::REQUESTS_TOTAL, "chain" => chain_label.clone(), "code" => code)
            .increment(1);
        metrics::histogram!(m::REQUEST_DURATION, "chain" => chain_label.clone())
            .record(start.elapsed().as_secs_f64());
        if let Ok(r) = &result {
            let decision = gproto::Decision::try_from(r.decision)
                .map(|d| d.as_str_name())
                .unwrap_or("DECISION_UNSPECIFIED");
            metrics::counter!(m::DECISIONS_TOTAL, "chain" => chain_label, "decision" => decision, "reason" => r.reason.clone())
                .increment(1);
        }
        result.map_err(Status::from)
    }

    async fn moderate_inner(
        &self,
        req: ModerateRequest,
        set: &ChainSet,
        deadline: Option<Instant>,
        caller: &str,
        admission: Admission,
    ) -> Result<ModerateResponse, GatewayError> {
        if req.chain.is_empty() {
            return Err(GatewayError::InvalidArgument(
                "chain: name the chain to run".into(),
            ));
        }
        let content = req
            .content
            .ok_or_else(|| GatewayError::InvalidArgument("content: missing".into()))?;
        if content.content_type.is_empty() {
            return Err(GatewayError::InvalidArgument(
                "content.content_type: missing (e.g. image/jpeg or text/plain)".into(),
            ));
        }
        match &content.payload {
            None => {
                return Err(GatewayError::InvalidArgument(
                    "content: set one of data, text or features".into(),
                ));
            }
            Some(Payload::Data(d)) if d.is_empty() => {
                return Err(GatewayError::InvalidArgument("content.data: empty".into()));
            }
            Some(Payload::Text(t)) if t.is_empty() => {
                return Err(GatewayError::InvalidArgument(
                    "content.text: empty; there is nothing to moderate".into(),
                ));
            }
            _ => {}
        }
        check_metadata(&req.metadata)?;
        let Some(chain) = set.chains.get(&req.chain).cloned() else {
            let mut known: Vec<&str> = set.chains.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(GatewayError::NotFound(format!(
                "chain `{}` is not known; known chains: {}",
                req.chain,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )));
        };
        if !chain.accepts(&content.content_type) {
            return Err(GatewayError::InvalidArgument(format!(
                "content.content_type: chain `{}` does not accept `{}`; it accepts {}",
                chain.name,
                content.content_type,
                chain.content_types.join(", ")
            )));
        }
        for stage in &chain.stages {
            for f in &stage.filters {
                let Some(d) = self
                    .runner
                    .registry
                    .get(&f.filter)
                    .and_then(|p| p.descriptor())
                else {
                    continue;
                };
                if !d
                    .content_types
                    .iter()
                    .any(|p| sekisho_proto::content_type_matches(p, &content.content_type))
                {
                    return Err(GatewayError::InvalidArgument(format!(
                        "content.content_type: chain `{}` stage `{}`: filter `{}` does not accept `{}`; it accepts {}",
                        chain.name,
                        stage.id,
                        f.filter,
                        content.content_type,
                        d.content_types.join(", ")
                    )));
                }
            }
        }
        // The caller's own limits first: a caller over them takes no place of the others'.
        let _caller_permit = match admission {
            Admission::Shed => self.callers.admit(caller)?,
            Admission::Wait => {
                let mut closing = self.closing.clone();
                tokio::select! {
                    permit = self.callers.admit_waiting(caller) => permit,
                    () = closing_time(&mut closing) => {
                        return Err(GatewayError::Unavailable(SHUTTING_DOWN.into()));
                    }
                }
            }
        };
        let _place = match admission {
            Admission::Shed => self.places.take().ok_or_else(|| {
                GatewayError::overloaded(format!(
                    "the gateway is serving its limit of {} requests; retry with backoff",
                    self.max_in_flight
                ))
            })?,
            Admission::Wait => {
                let mut closing = self.closing.clone();
                tokio::select! {
                    place = self.places.wait() => place,
                    () = closing_time(&mut closing) => {
                        return Err(GatewayError::Unavailable(SHUTTING_DOWN.into()));
                    }
                }
            }
        };
        let gauge = metrics::gauge!(m::REQUESTS_IN_FLIGHT);
        gauge.increment(1.0);
        let _dec = scopeguard(move || gauge.decrement(1.0));
        let request_id = if req.request_id.is_empty() {
            format!("{:032x}", rand::random::<u128>())
        } else {
            req.request_id
        };
        self.runner
            .run(
                chain,
                Item {
                    content,
                    metadata: req.metadata,
                    request_id,
                    deadline,
                },
            )
            .await
    }
}

/// Runs `f` when dropped, so the in-flight gauge falls even if the caller goes away.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ModerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn moderate(
        &self,
        request: Request<ModerateRequest>,
    ) -> Result<Response<ModerateResponse>, Status> {
        let deadline = sekisho_proto::grpc_deadline(request.metadata());
        let caller = self.callers.caller_of(request.metadata()).to_owned();
        self.moderate_one(request.into_inner(), deadline, &caller, Admission::Shed)
            .await
            .map(Response::new)
    }

    type ModerateStreamStream = ResponseStream;

    /// Requests are served up to a window at a time, answered in order. A request that
    /// fails (unknown chain, bad content) ends the stream with its status. Over its
    /// caller's own limits or the gateway's `max_in_flight` a request waits instead (the
    /// stream reads no more meanwhile, which flow control passes back to the client).
    /// When the gateway shuts down, the stream reads no more requests, answers those it
    /// has read (a request still waiting for a place ends it UNAVAILABLE instead), and
    /// ends UNAVAILABLE: the client sends the rest again (to another replica).
    async fn moderate_stream(
        &self,
        request: Request<Streaming<ModerateRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let svc = self.clone();
        let caller: Arc<str> = self.callers.caller_of(request.metadata()).into();
        let mut closing = self.closing.clone();
        // Set only when shutdown cut the stream, not when the client ended it.
        let cut = Arc::new(AtomicBool::new(false));
        let cut_by_closing = cut.clone();
        let out = request
            .into_inner()
            .take_until(async move {
                closing_time(&mut closing).await;
                cut_by_closing.store(true, Ordering::Release);
            })
            .map(move |r| {
                let svc = svc.clone();
                let caller = caller.clone();
                async move { svc.moderate_one(r?, None, &caller, Admission::Wait).await }
            })
            .buffered(STREAM_WINDOW)
            .chain(
                futures::stream::once(async move { cut.load(Ordering::Acquire) }).filter_map(
                    |cut| std::future::ready(cut.then(|| Err(Status::unavailable(SHUTTING_DOWN)))),
                ),
            );
        Ok(Response::new(Box::pin(out)))
    }

    async fn list_filters(
        &self,
        _: Request<gproto::ListFiltersRequest>,
    ) -> Result<Response<gproto::ListFiltersResponse>, Status> {
        Ok(Response::new(gproto::ListFiltersResponse {
            filters: self.runner.registry.list(),
        }))
    }

    async fn list_chains(
        &self,
        _: Request<gproto::ListChainsRequest>,
    ) -> Result<Response<gproto::ListChainsResponse>, Status> {
        let set = self.chains.snapshot();
        let mut chains: Vec<gproto::ChainSummary> = set
            .chains
            .values()
            .map(|c| gproto::ChainSummary {
                name: c.name.clone(),
                version: c.version,
                content_types: c.content_types.clone(),
                stages: c.stages.iter().map(|s| s.id.clone()).collect(),
                source: c.source.clone(),
            })
            .collect();
        chains.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(gproto::ListChainsResponse {
            chains,
            problems: set.problems.clone(),
        }))
    }
}

/// How a stream cut by shutdown ends.
const SHUTTING_DOWN: &str = "the gateway is shutting down: the requests answered above were run, \
     the ones after them were not; send those again";

/// Resolves once `closing` turns true; never without a closing signal, or once its
/// sender is gone without having sent one.
async fn closing_time(closing: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = closing
        && rx.wait_for(|c| *c).await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A freed place wakes a waiter, which finds it free; while a waiter waits, a unary
    /// call still takes a place freed before the waiter runs (no queue hands it over).
    #[tokio::test(flavor = "current_thread")]
    async fn a_freed_place_goes_to_a_waiter_or_to_whoever_takes_it_first() {
        let places = Places::new(1);
        let held = places.take().expect("one place");
        assert!(places.take().is_none());
        let waiter = tokio::spawn({
            let places = places.clone();
            async move { places.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        // Taken before the woken waiter runs: the waiter goes back to waiting.
        let taken = places.take().expect("a freed place is anyone's");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(taken);
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter is woken")
            .unwrap();
        assert!(places.take().is_none(), "the waiter holds the place");
        drop(got);
        assert!(places.take().is_some());
    }

    #[test]
    fn metadata_is_bounded_in_entries_and_bytes() {
        let entries = |n: usize, len: usize| {
            (0..n)
                .map(|i| (format!("{i:04}"), "v".repeat(len)))
                .collect()
        };
        assert!(check_metadata(&entries(128, 500)).is_ok());
        let e = check_metadata(&entries(129, 1)).unwrap_err().to_string();
        assert!(e.contains("metadata: 129 entries; the limit is 128"), "{e}");
        // 16 keys of 4 bytes and values of 4,093: 65,552 bytes.
        let e = check_metadata(&entries(16, 4093)).unwrap_err().to_string();
        assert!(
            e.contains("metadata: 65552 bytes of keys and values; the limit is 65536"),
            "{e}"
        );
        assert!(check_metadata(&entries(16, 4092)).is_ok());
    }
}
