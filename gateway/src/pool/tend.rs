//! Tending one endpoint for as long as discovery lists it: `Describe` first, then follow
//! its `grpc.health.v1` Watch, asking `Describe` again every `describe_interval`. When the
//! endpoint cannot be reached it is kept out and tried again with backoff (250 ms
//! doubling to 10 s); it is described afresh before it takes traffic again.

use std::sync::Arc;
use std::time::Duration;

use sekisho_proto::filter::v1 as fproto;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{Endpoint, FilterPool, Health};

/// How long `Describe` may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The service name the filter SDK reports health under.
const FILTER_SERVICE: &str = "sekisho.filter.v1.Filter";

enum HealthEnd {
    /// Time to ask `Describe` again.
    Redescribe,
    /// The watch broke: the endpoint went away.
    Broken(String),
}

pub(super) async fn tend(pool: Arc<FilterPool>, ep: Arc<Endpoint>) {
    let first_backoff = Duration::from_millis(250);
    let mut backoff = first_backoff;
    loop {
        match describe(&ep).await {
            Ok(d) => {
                {
                    let mut s = ep.lock();
                    s.described = Some(d);
                    s.unreachable.clear();
                    s.tried = true;
                }
                pool.recompute();
                backoff = first_backoff;
                match follow_health(&pool, &ep).await {
                    HealthEnd::Redescribe => continue,
                    HealthEnd::Broken(why) => unreachable(&pool, &ep, why),
                }
            }
            Err(why) => unreachable(&pool, &ep, why),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn unreachable(pool: &FilterPool, ep: &Endpoint, why: String) {
    {
        let mut s = ep.lock();
        s.described = None;
        s.unreachable = why;
        s.tried = true;
        s.health = Health::Unknown;
    }
    pool.recompute();
}

async fn describe(ep: &Endpoint) -> Result<Arc<fproto::FilterDescriptor>, String> {
    let mut req = tonic::Request::new(fproto::DescribeRequest {});
    req.set_timeout(DESCRIBE_TIMEOUT);
    match tokio::time::timeout(DESCRIBE_TIMEOUT, ep.client().describe(req)).await {
        Err(_) => Err(format!(
            "Describe did not answer within {DESCRIBE_TIMEOUT:?}"
        )),
        Ok(Err(s)) => Err(format!("Describe failed: {}: {}", s.code(), s.message())),
        Ok(Ok(r)) => Ok(Arc::new(r.into_inner())),
    }
}

/// Follows the endpoint's health until the watch breaks or it is time to describe again.
/// An endpoint without a health service (UNIMPLEMENTED, or SERVICE_UNKNOWN for the
/// filter's service) is not held back for it.
async fn follow_health(pool: &FilterPool, ep: &Endpoint) -> HealthEnd {
    let interval = pool.settings.describe_interval;
    let redescribe = tokio::time::sleep(interval);
    tokio::pin!(redescribe);
    let mut client = HealthClient::new(ep.channel.clone());
    let watch = client.watch(HealthCheckRequest {
        service: FILTER_SERVICE.into(),
    });
    let mut stream = tokio::select! {
        r = watch => match r {
            Ok(s) => Some(s.into_inner()),
            Err(s) if s.code() == tonic::Code::Unimplemented || s.code() == tonic::Code::NotFound => None,
            Err(s) => return HealthEnd::Broken(format!("health watch failed: {}: {}", s.code(), s.message())),
        },
        _ = &mut redescribe => return HealthEnd::Redescribe,
    };
    loop {
        let Some(s) = stream.as_mut() else {
            // No health service: describe again on the interval, nothing else to follow.
            redescribe.as_mut().await;
            return HealthEnd::Redescribe;
        };
        tokio::select! {
            msg = s.message() => match msg {
                Ok(Some(m)) => {
                    let health = match ServingStatus::try_from(m.status) {
                        Ok(ServingStatus::Serving) => Health::Serving,
                        Ok(ServingStatus::NotServing) => Health::NotServing,
                        _ => Health::Unknown,
                    };
                    let changed = {
                        let mut st = ep.lock();
                        let changed = st.health != health;
                        st.health = health;
                        changed
                    };
                    if changed {
                        pool.recompute();
                    }
                }
                Ok(None) => return HealthEnd::Broken("the health watch ended".into()),
                Err(e) => return HealthEnd::Broken(format!("health watch: {}: {}", e.code(), e.message())),
            },
            _ = &mut redescribe => return HealthEnd::Redescribe,
        }
    }
}
