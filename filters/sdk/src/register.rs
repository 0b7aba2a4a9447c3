//! Registering a running filter in etcd, for gateways that discover filters there: one
//! key, `{prefix}/{filter}/{instance}`, bound to a lease kept alive every third of its
//! TTL. If etcd goes away or the lease is lost, the registration is made again with
//! backoff once etcd answers. On shutdown the lease is revoked, so the key goes at once.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, PutOptions};
use sekisho_proto::registration::{Registration, etcd_key};
use tokio::sync::oneshot;

/// Where and how to register.
#[derive(Debug, Clone)]
pub struct EtcdRegistration {
    /// etcd client URLs, `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Key prefix; gateways watch the same one. Default `/sekisho/filters`.
    pub prefix: String,
    /// The address gateways dial, `http://host:port` (the pod IP, in Kubernetes).
    pub advertise: String,
    /// Lease TTL: how long a replica that died without revoking stays listed. Default 10 s.
    pub ttl: Duration,
}

impl EtcdRegistration {
    pub fn new(endpoints: Vec<String>, advertise: String) -> Self {
        EtcdRegistration {
            endpoints,
            prefix: sekisho_proto::registration::DEFAULT_ETCD_PREFIX.to_owned(),
            advertise,
            ttl: Duration::from_secs(10),
        }
    }
}

/// A registration being kept alive; [`Registered::withdraw`] takes it back.
pub(crate) struct Registered {
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Registered {
    /// Revokes the lease (the key goes with it) and waits, at most 2 s, for etcd to say so.
    pub async fn withdraw(mut self) {
        if let Some(stop) = self.stop.take() {
            let (done_tx, done_rx) = oneshot::channel();
            if stop.send(done_tx).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), done_rx).await;
            }
        }
        self.task.abort();
    }
}

/// Starts keeping `filter`'s registration; returns once the first attempt has been made,
/// so that a replica with etcd up is listed before it reports that it is serving.
pub(crate) async fn register(reg: EtcdRegistration, filter: String) -> Result<Registered, String> {
    sekisho_proto::registration::check_address(&reg.advertise)?;
    if reg.ttl < Duration::from_secs(2) {
        return Err("the etcd lease TTL must be at least 2 s".into());
    }
    let instance = instance_id();
    let key = etcd_key(&reg.prefix, &filter, &instance);
    let value = Registration {
        filter: filter.clone(),
        address: reg.advertise.clone(),
    }
    .to_json();
    let (stop_tx, mut stop_rx) = oneshot::channel::<oneshot::Sender<()>>();
    let (first_tx, first_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let lease = AtomicI64::new(0);
        let mut first = Some(first_tx);
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = keep(&reg, &key, &value, &lease, &mut first);
            tokio::select! {
                why = attempt => {
                    tracing::warn!(key, etcd = ?reg.endpoints, error = %why, retry_in = ?backoff,
                        "etcd registration lost; registering again");
                    if let Some(f) = first.take() {
                        let _ = f.send(());
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        done = &mut stop_rx => { if let Ok(d) = done { let _ = d.send(()); } return; }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                done = &mut stop_rx => {
                    revoke(&reg, &key, lease.load(Ordering::Relaxed)).await;
                    if let Ok(d) = done {
                        let _ = d.send(());
                    }
                    return;
                }
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(3), first_rx).await;
    Ok(Registered {
        stop: Some(stop_tx),
        task,
    })
}

/// Puts the key under a fresh lease and keeps the lease alive; returns why it stopped.
async fn keep(
    reg: &EtcdRegistration,
    key: &str,
    value: &str,
    current: &AtomicI64,
    first: &mut Option<oneshot::Sender<()>>,
) -> String {
    let mut client = match connect(reg).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let ttl = reg.ttl.as_secs() as i64;
    let lease = match client.lease_grant(ttl, None).await {
        Ok(l) => l.id(),
        Err(e) => return format!("lease grant: {e}"),
    };
    if let Err(e) = client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
    {
        return format!("put {key}: {e}");
    }
    current.store(lease, Ordering::Relaxed);
    tracing::info!(key, lease, ttl_s = ttl, "registered in etcd");
    if let Some(f) = first.take() {
        let _ = f.send(());
    }
    let (mut keeper, mut responses) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return format!("lease keep-alive: {e}"),
    };
    let every = reg.ttl / 3;
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return format!("lease keep-alive: {e}");
        }
        match tokio::time::timeout(every, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return "the lease expired".into(),
            Ok(Ok(None)) => return "the keep-alive stream ended".into(),
            Ok(Err(e)) => return format!("lease keep-alive: {e}"),
            Err(_) => return "etcd did not answer a keep-alive".into(),
        }
        tokio::time::sleep(every).await;
    }
}

async fn revoke(reg: &EtcdRegistration, key: &str, lease: i64) {
    if lease == 0 {
        return;
    }
    let result = async {
        let mut c = connect(reg).await?;
        c.lease_revoke(lease)
            .await
            .map_err(|e| format!("lease revoke: {e}"))
    };
    match tokio::time::timeout(Duration::from_secs(2), result).await {
        Ok(Ok(_)) => tracing::info!(key, "withdrawn from etcd"),
        Ok(Err(e)) => {
            tracing::warn!(key, error = %e, "could not withdraw from etcd; the lease will expire")
        }
        Err(_) => tracing::warn!(
            key,
            "etcd did not answer the withdrawal; the lease will expire"
        ),
    }
}

async fn connect(reg: &EtcdRegistration) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    Client::connect(&reg.endpoints, Some(opts))
        .await
        .map_err(|e| format!("cannot connect to etcd {:?}: {e}", reg.endpoints))
}

/// A replica's instance name: the host name and process id, plus a random part so that
/// two servers in one process (tests, `sekisho dev`) differ.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}
