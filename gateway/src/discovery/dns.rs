//! DNS: names re-resolved every `interval`, the form Kubernetes headless Services take.
//!
//! ```yaml
//! discovery:
//!   dns:
//!     interval: 5s
//!     names:
//!       # every A/AAAA address of the name, at one port
//!       - {filter: face-detect, host: sekisho-face-detect.sekisho.svc.cluster.local, port: 50051}
//!       # every SRV target at the port its record names
//!       - {filter: ng-image, srv: _grpc._tcp.sekisho-ng-image.sekisho.svc.cluster.local}
//! ```
//!
//! A name that does not exist or has no records has no endpoints (a headless Service with
//! no ready pod answers so). A name that cannot be resolved now (server away, timeout)
//! keeps the endpoints it had; the problem is reported once until it clears.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use futures::stream::BoxStream;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Discovery, FoundEndpoint, ReportOnce, SourceEvent};
use crate::config::{DnsName, DnsSource};

/// Most addresses one name may yield; more are reported and cut.
const MAX_PER_NAME: usize = 256;

#[derive(Debug, Clone)]
pub struct DnsDiscovery {
    source: DnsSource,
}

impl DnsDiscovery {
    /// Checks the names; the configuration's `validate` calls the same checks.
    pub fn new(source: DnsSource) -> Result<Self, String> {
        source.check()?;
        Ok(DnsDiscovery { source })
    }

    fn resolver(&self) -> Result<TokioResolver, NetError> {
        let mut builder = if self.source.nameservers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let mut config = ResolverConfig::default();
            for ns in &self.source.nameservers {
                // Checked by `DnsSource::check`.
                let addr = parse_nameserver(ns).expect("checked nameserver");
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                config.add_name_server(ns);
            }
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        };
        let opts = builder.options_mut();
        opts.timeout = self.source.timeout;
        opts.attempts = 2;
        builder.build()
    }
}

/// `ip` or `ip:port` (port 53 when left out); IPv6 with a port as `[::1]:53`.
pub(crate) fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("nameserver `{s}`: not an IP address or IP:port"))
}

fn address(ip: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(ip, port))
}

/// What resolving one name gave.
enum Resolved {
    Found(Vec<String>),
    /// The name cannot be resolved now; keep what it had.
    Trouble(String),
}

fn is_gone(e: &NetError) -> bool {
    e.is_no_records_found() || e.is_nx_domain()
}

async fn resolve(resolver: &TokioResolver, name: &DnsName) -> Resolved {
    let mut found = BTreeSet::new();
    if let Some(host) = &name.host {
        let port = name.port.unwrap_or_default();
        match resolver.lookup_ip(host.as_str()).await {
            Ok(ips) => found.extend(ips.iter().map(|ip| address(ip, port))),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Resolved::Trouble(format!("{host}: {e}")),
        }
    } else if let Some(srv) = &name.srv {
        let records = match resolver.srv_lookup(srv.as_str()).await {
            Ok(l) => l,
            Err(e) if is_gone(&e) => return Resolved::Found(Vec::new()),
            Err(e) => return Resolved::Trouble(format!("{srv}: {e}")),
        };
        for record in records.answers() {
            let RData::SRV(s) = &record.data else {
                continue;
            };
            let target = s.target.to_string();
            match resolver.lookup_ip(target.as_str()).await {
                Ok(ips) => found.extend(ips.iter().map(|ip| address(ip, s.port))),
                Err(e) if is_gone(&e) => {}
                Err(e) => return Resolved::Trouble(format!("{srv}: target {target}: {e}")),
            }
        }
    }
    Resolved::Found(found.into_iter().collect())
}

impl Discovery for DnsDiscovery {
    fn kind(&self) -> &'static str {
        "dns"
    }

    fn watch(self: Box<Self>) -> BoxStream<'static, SourceEvent> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let resolver = match self.resolver() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "DNS discovery cannot start its resolver");
                    let _ = tx
                        .send(SourceEvent::Trouble(format!("no DNS resolver: {e}")))
                        .await;
                    return;
                }
            };
            let names = &self.source.names;
            // What each name gave last; None until it first resolves.
            let mut last: Vec<Option<Vec<String>>> = vec![None; names.len()];
            let mut said: Option<Vec<FoundEndpoint>> = None;
            let mut reports = ReportOnce::default();
            loop {
                // Every round asks the server again: TTLs of headless Services are short
                // but a cached answer would still hide a change for that long.
                resolver.clear_cache();
                let mut problems = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    match resolve(&resolver, name).await {
                        Resolved::Found(mut addrs) => {
                            if addrs.len() > MAX_PER_NAME {
                                problems.push(format!(
                                    "{}: {} addresses, only the first {MAX_PER_NAME} used",
                                    name.filter,
                                    addrs.len()
                                ));
                                addrs.truncate(MAX_PER_NAME);
                            }
                            last[i] = Some(addrs);
                        }
                        Resolved::Trouble(why) => problems.push(why),
                    }
                }
                for p in &problems {
                    if reports.first(p) {
                        tracing::warn!(problem = %p, "DNS discovery: keeping the last endpoints");
                        if tx.send(SourceEvent::Trouble(p.clone())).await.is_err() {
                            return;
                        }
                    }
                }
                reports.keep_only(&problems);
                let now: Vec<FoundEndpoint> = names
                    .iter()
                    .zip(&last)
                    .flat_map(|(name, addrs)| {
                        addrs.iter().flatten().map(|a| FoundEndpoint {
                            filter: name.filter.clone(),
                            address: a.clone(),
                        })
                    })
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                // Said once the first round is over, then on every change.
                if said.as_ref() != Some(&now) {
                    if tx.send(SourceEvent::Endpoints(now.clone())).await.is_err() {
                        return;
                    }
                    said = Some(now);
                }
                tokio::time::sleep(self.source.interval).await;
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_take_an_optional_port() {
        assert_eq!(
            parse_nameserver("10.0.0.10").unwrap(),
            "10.0.0.10:53".parse().unwrap()
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(parse_nameserver("[::1]:53").unwrap().port(), 53);
        assert!(
            parse_nameserver("dns.local")
                .unwrap_err()
                .contains("dns.local")
        );
    }

    #[test]
    fn the_configuration_names_the_entry_that_is_wrong() {
        let problem = |names: serde_json::Value| {
            let mut cfg: crate::GatewayConfig = serde_json::from_value(serde_json::json!({
                "discovery": {"dns": {"names": names}}
            }))
            .unwrap();
            cfg.listen = "127.0.0.1:0".into();
            cfg.validate().err().map(|e| e.to_string())
        };
        assert_eq!(
            problem(serde_json::json!([{"filter": "a", "host": "a.svc", "port": 1}])),
            None
        );
        assert_eq!(
            problem(serde_json::json!([{"filter": "a", "srv": "_grpc._tcp.a.svc"}])),
            None
        );
        let p = problem(serde_json::json!([
            {"filter": "a", "srv": "_grpc._tcp.a.svc"},
            {"filter": "b", "host": "b.svc"}
        ]))
        .unwrap();
        assert!(
            p.contains("discovery.dns.names[1]: `host` needs a `port`"),
            "{p}"
        );
        let p = problem(serde_json::json!([{"filter": "a", "srv": "s", "port": 5}])).unwrap();
        assert!(p.contains("drop `port`"), "{p}");
        let p = problem(serde_json::json!([{"filter": "a"}])).unwrap();
        assert!(p.contains("give `host` and `port`, or `srv`"), "{p}");
        assert!(
            problem(serde_json::json!([]))
                .unwrap()
                .contains("at least one")
        );
    }

    #[test]
    fn addresses_bracket_ipv6() {
        assert_eq!(
            address("10.1.2.3".parse().unwrap(), 50051),
            "http://10.1.2.3:50051"
        );
        assert_eq!(address("fd00::1".parse().unwrap(), 7), "http://[fd00::1]:7");
    }
}
