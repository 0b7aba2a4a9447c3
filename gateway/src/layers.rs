//! Tower layers, composed in one place each:
//!
//! - [`filter_stack`]: a filter call = timeout (the whole budget) ∘ retry (backoff with
//!   jitter, retryable codes only, within the filter's retry budget) ∘ one attempt (an
//!   endpoint picked from the filter's pool, the deadline sent as `grpc-timeout`).
//! - [`GrpcFrameLimit`]: refuses a gRPC request message larger than the limit from its
//!   5-byte length prefix, before the message is buffered.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use http_body::{Body, Frame};
use sekisho_proto::filter::v1::{ApplyRequest, ApplyResponse};
use tonic::{Code, Status};
use tower::util::BoxService;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::chain::ResolvedPolicy;
use crate::metrics as m;
use crate::pool::FilterPool;

/// Codes worth another attempt: the filter was away or shed load, not the item's fault.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted
    )
}

/// One `Apply` attempt: picks an endpoint of the filter's pool (another than those
/// this call has tried, when one is ready), calls it, and tells the pool how it went.
#[derive(Clone)]
struct ApplyCall {
    pool: Arc<FilterPool>,
    attempts: Arc<AtomicU32>,
    tried: Arc<Mutex<Vec<u64>>>,
    /// When the call's first attempt began: a later attempt's pushback is for a call
    /// with that much less time than a new one.
    began: Instant,
    deadline: Instant,
}

impl Service<ApplyRequest> for ApplyCall {
    type Response = ApplyResponse;
    type Error = Status;
    type Future = BoxFuture<'static, Result<ApplyResponse, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ApplyRequest) -> Self::Future {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        Box::pin(async move {
            let tried = this.tried.lock().map(|t| t.clone()).unwrap_or_default();
            let call = this.pool.pick(&tried, this.deadline).await?;
            let endpoint = call.endpoint().clone();
            if let Ok(mut t) = this.tried.lock() {
                t.push(endpoint.id);
            }
            let left = this.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Status::deadline_exceeded("no time left for the call"));
            }
            let started = Instant::now();
            let mut req = tonic::Request::new(req);
            // The filter learns the deadline too (`grpc-timeout`) and can stop early.
            req.set_timeout(left);
            let result = endpoint
                .client()
                .apply(req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| broken_as_unavailable(deadline_as_deadline(s), &endpoint.address));
            this.pool
                .record(&endpoint, result.as_ref().map(|_| ()), started.elapsed());
            if let Err(st) = &result {
                this.pool
                    .heed_pushback(&endpoint, st, started.duration_since(this.began));
            }
            drop(call);
            result
        })
    }
}

/// tonic reports a `grpc-timeout` expiring as CANCELLED "Timeout expired", on the client
/// (with a `TimeoutExpired` source) or from a tonic server (only the message survives
/// the wire). Either way it is a deadline.
fn deadline_as_deadline(s: Status) -> Status {
    let expired = std::error::Error::source(&s).is_some_and(|e| e.is::<tonic::TimeoutExpired>())
        || s.message() == tonic::TimeoutExpired(()).to_string();
    if s.code() == Code::Cancelled && expired {
        Status::deadline_exceeded(s.message().to_owned())
    } else {
        s
    }
}

/// A connection that broke under a call (the replica died) comes back from tonic as
/// UNKNOWN "transport error". Filters score without side effects, so the call is safe to
/// send again: it is reported as UNAVAILABLE, which is retried on another replica.
fn broken_as_unavailable(s: Status, address: &str) -> Status {
    let transport =
        std::error::Error::source(&s).is_some_and(|e| e.is::<tonic::transport::Error>());
    if s.code() == Code::Unknown && transport {
        let why = std::error::Error::source(&s)
            .and_then(std::error::Error::source)
            .map(|e| e.to_string())
            .unwrap_or_else(|| s.message().to_owned());
        Status::unavailable(format!("the connection to {address} broke: {why}"))
    } else {
        s
    }
}

/// Retries retryable failures, with exponential backoff and full jitter, while the
/// filter's retry budget allows.
#[derive(Clone)]
struct RetryPolicy {
    remaining: u32,
    next_backoff: Duration,
    pool: Arc<FilterPool>,
}

impl tower::retry::Policy<ApplyRequest, ApplyResponse, Status> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut ApplyRequest,
        result: &mut Result<ApplyResponse, Status>,
    ) -> Option<Self::Future> {
        match result {
            Err(s) if self.remaining > 0 && retryable(s.code()) => {
                if !self.pool.withdraw_retry() {
                    return None;
                }
                self.remaining -= 1;
                let wait = self.next_backoff.mul_f64(rand::random::<f64>());
                self.next_backoff = self.next_backoff.saturating_mul(2);
                metrics::counter!(m::FILTER_RETRIES_TOTAL, "filter" => self.pool.name.clone())
                    .increment(1);
                Some(tokio::time::sleep(wait))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &ApplyRequest) -> Option<ApplyRequest> {
        // Content is `Bytes`: a clone shares the image, it does not copy it.
        (self.remaining > 0).then(|| req.clone())
    }
}

/// A backstop past the deadline: each attempt carries the deadline itself (`grpc-timeout`,
/// enforced by the client too), so that its failure is counted against the endpoint.
const BACKSTOP: Duration = Duration::from_millis(50);

/// The guarded call for one filter under one policy, to finish by `deadline`: the request
/// path's only place where deadline, retry and endpoint choice are put together.
pub fn filter_stack(
    pool: Arc<FilterPool>,
    policy: &ResolvedPolicy,
    deadline: Instant,
    attempts: Arc<AtomicU32>,
) -> BoxService<ApplyRequest, ApplyResponse, Status> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let timeouts_label = pool.name.clone();
    ServiceBuilder::new()
        .map_err(move |e: tower::BoxError| {
            let status = match e.downcast::<Status>() {
                Ok(s) => *s,
                Err(e) if e.is::<tower::timeout::error::Elapsed>() => {
                    Status::deadline_exceeded(format!("no answer within {budget:?}"))
                }
                Err(e) => Status::internal(e.to_string()),
            };
            if status.code() == Code::DeadlineExceeded {
                metrics::counter!(m::FILTER_TIMEOUTS_TOTAL, "filter" => timeouts_label.clone())
                    .increment(1);
            }
            status
        })
        .timeout(budget + BACKSTOP)
        .retry(RetryPolicy {
            remaining: policy.retries,
            next_backoff: policy.backoff,
            pool: pool.clone(),
        })
        .service(ApplyCall {
            pool,
            attempts,
            tried: Arc::default(),
            began: Instant::now(),
            deadline,
        })
        .boxed()
}

pin_project_lite::pin_project! {
    /// A request body that fails with RESOURCE_EXHAUSTED as soon as a gRPC message prefix
    /// declares more than `limit` bytes.
    pub struct GrpcFrameLimit<B> {
        #[pin]
        inner: B,
        limit: usize,
        header: Vec<u8>,
        skip: usize,
    }
}

impl<B> GrpcFrameLimit<B> {
    pub fn new(inner: B, limit: usize) -> Self {
        GrpcFrameLimit {
            inner,
            limit,
            header: Vec::with_capacity(5),
            skip: 0,
        }
    }
}

impl<B> Body for GrpcFrameLimit<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tower::BoxError>,
{
    type Data = Bytes;
    type Error = tower::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let mut buf = data.clone();
            while buf.has_remaining() {
                if *this.skip > 0 {
                    let n = (*this.skip).min(buf.remaining());
                    buf.advance(n);
                    *this.skip -= n;
                    continue;
                }
                this.header.push(buf.get_u8());
                if this.header.len() == 5 {
                    let len = u32::from_be_bytes([
                        this.header[1],
                        this.header[2],
                        this.header[3],
                        this.header[4],
                    ]) as usize;
                    this.header.clear();
                    if len > *this.limit {
                        let status = Status::resource_exhausted(format!(
                            "the request message is {len} bytes; the limit is {} bytes (max_request_bytes)",
                            this.limit
                        ));
                        return Poll::Ready(Some(Err(Box::new(status))));
                    }
                    *this.skip = len;
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
