//! The gateway's configuration: a file (YAML or TOML) plus `SEKISHO_*` environment
//! overrides (`SEKISHO_LISTEN`, `SEKISHO_MAX_REQUEST_BYTES`, ...), validated at start-up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

/// Everything the gateway needs to start. Every field has a documented default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address for gRPC, the JSON proxy, `/metrics` and `/openapi.json` (one port).
    pub listen: String,
    /// Directory of chain files (`*.yaml`, `*.yml`, `*.json`), read at start-up.
    pub chains_dir: Option<PathBuf>,
    /// A chainstore to follow (`http://host:port`): chains change as it changes. Give
    /// this or `chains_dir`, not both.
    pub chainstore: Option<String>,
    /// Largest request message, in bytes (gRPC). JSON bodies may be 4/3 of this plus
    /// 16 KiB, for base64. Larger requests get RESOURCE_EXHAUSTED / HTTP 413.
    pub max_request_bytes: usize,
    /// Requests in flight at once; more are shed with RESOURCE_EXHAUSTED / HTTP 429.
    pub max_in_flight: usize,
    /// Static discovery: filter name → its endpoints (`http://host:port`).
    pub filters: BTreeMap<String, StaticFilter>,
    /// Remote aggregators by name.
    pub aggregators: BTreeMap<String, RemoteAggregator>,
    /// HTTP/2 connections to each filter endpoint, used in turn. One connection is
    /// served by one task; on 2 cores, 2 gave +8 % over 1 and 4 no more (BENCHMARKS.md).
    pub connections_per_endpoint: usize,
    /// How often a filter's descriptor is asked for again.
    #[serde(with = "humantime_serde")]
    pub describe_interval: Duration,
    /// Discovery sources besides `filters:` (which is the static source).
    pub discovery: DiscoveryConfig,
    /// How a filter's calls are spread over its endpoints: `p2c` (of two endpoints drawn
    /// at random, the one with the lower peak-EWMA latency × calls in flight),
    /// `p2c_in_flight` (the one with fewer calls in flight), or `round_robin`.
    pub balance: Balance,
    /// When an endpoint is taken out of rotation for failing calls.
    pub outlier: OutlierConfig,
    /// How many retries a filter's calls may add: `percent` of its calls plus
    /// `min_per_second`, over a 10 s window, so that retries cannot multiply an outage.
    pub retry_budget: RetryBudgetConfig,
    /// Per-caller limits, so that one caller cannot starve the others. Off by default.
    pub callers: CallersConfig,
}

/// Per-caller limits (see [`crate::callers`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallersConfig {
    /// The request header (gRPC metadata key) that names the caller; a request without
    /// it is `anonymous`'s. Default `x-sekisho-principal`, which the edge sets to the
    /// signed-in principal (and which a service calling the gateway directly sets to its
    /// own name).
    pub header: String,
    /// Every caller's limits, unless `overrides` names it. Default: none.
    pub default: CallerLimit,
    /// Callers with limits of their own (replacing `default` whole).
    pub overrides: BTreeMap<String, CallerLimit>,
    /// Callers tracked at once (idle ones are forgotten first). Default 10,000.
    pub max_callers: usize,
}

impl Default for CallersConfig {
    fn default() -> Self {
        CallersConfig {
            header: "x-sekisho-principal".into(),
            default: CallerLimit::default(),
            overrides: BTreeMap::new(),
            max_callers: 10_000,
        }
    }
}

/// One caller's limits; each is off when absent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallerLimit {
    /// Its requests in flight at once; more are shed (RESOURCE_EXHAUSTED / HTTP 429).
    pub max_in_flight: Option<usize>,
    /// Its requests a second, on average; more are shed.
    pub rate: Option<f64>,
    /// How many requests it may send at once above `rate` (the bucket's size). Default:
    /// `rate`, at least 1.
    pub burst: Option<u32>,
}

impl CallerLimit {
    fn check(&self, at: &str) -> Result<(), String> {
        if self.max_in_flight == Some(0) {
            return Err(format!("{at}.max_in_flight: must be at least 1"));
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0)
        {
            return Err(format!("{at}.rate: must be a number above 0, got {r}"));
        }
        if self.burst == Some(0) {
            return Err(format!("{at}.burst: must be at least 1"));
        }
        if self.burst.is_some() && self.rate.is_none() {
            return Err(format!("{at}.burst: needs a rate"));
        }
        Ok(())
    }
}

impl CallersConfig {
    fn check(&self) -> Result<(), String> {
        if http::HeaderName::from_bytes(self.header.as_bytes()).is_err()
            || self.header.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(format!(
                "callers.header: `{}` is not a lower-case header name",
                self.header
            ));
        }
        if self.max_callers == 0 {
            return Err("callers.max_callers: must be at least 1".into());
        }
        self.default.check("callers.default")?;
        for (name, l) in &self.overrides {
            l.check(&format!("callers.overrides.{name}"))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// A file of `filter: [address, ...]`, re-read every `interval`.
    pub file: Option<FileSource>,
    /// Replicas registered in etcd by the filter SDK (`sekisho filter ... --etcd`).
    pub etcd: Option<EtcdSource>,
    /// Names re-resolved in DNS (A/AAAA or SRV), e.g. Kubernetes headless Services.
    pub dns: Option<DnsSource>,
    /// Ready pods annotated `sekisho.io/filter`, watched through the Kubernetes API.
    pub kubernetes: Option<KubernetesSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSource {
    /// The namespaces whose pods are watched (one watch each).
    pub namespaces: Vec<String>,
    /// Only pods with these labels, e.g. `sekisho.io/role=filter`.
    #[serde(default)]
    pub label_selector: Option<String>,
    /// The API server's URL; default: in-cluster (the pod's service account), else the
    /// kubeconfig (`KUBECONFIG`).
    #[serde(default)]
    pub api_server: Option<String>,
}

impl KubernetesSource {
    pub fn check(&self) -> Result<(), String> {
        if self.namespaces.is_empty() {
            return Err("discovery.kubernetes.namespaces: give at least one namespace".into());
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            let ok = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(format!(
                    "discovery.kubernetes.namespaces[{i}]: `{ns}` is not a namespace name"
                ));
            }
        }
        if let Some(url) = &self.api_server
            && url
                .parse::<http::Uri>()
                .map(|u| u.scheme().is_none())
                .unwrap_or(true)
        {
            return Err(format!(
                "discovery.kubernetes.api_server: `{url}` is not a URL (https://host:port)"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSource {
    /// How often every name is resolved again. Default 5s.
    #[serde(default = "default_dns_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// One query's time limit. Default 2s.
    #[serde(default = "default_dns_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Name servers, `ip` or `ip:port`; default: the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<String>,
    pub names: Vec<DnsName>,
}

/// One name to resolve for one filter: `host` with `port`, or `srv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsName {
    pub filter: String,
    /// Every A/AAAA address of this name is an endpoint at `port`.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// Every target of this SRV name is an endpoint at the record's port, e.g.
    /// `_grpc._tcp.face-detect.sekisho.svc.cluster.local`.
    #[serde(default)]
    pub srv: Option<String>,
}

fn default_dns_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_dns_timeout() -> Duration {
    Duration::from_secs(2)
}

impl DnsSource {
    /// Names the first entry that is not usable.
    pub fn check(&self) -> Result<(), String> {
        if self.interval < Duration::from_millis(100) {
            return Err("discovery.dns.interval: must be at least 100ms".into());
        }
        if self.timeout.is_zero() {
            return Err("discovery.dns.timeout: must be above zero".into());
        }
        for ns in &self.nameservers {
            crate::discovery::dns::parse_nameserver(ns)
                .map_err(|e| format!("discovery.dns.nameservers: {e}"))?;
        }
        if self.names.is_empty() {
            return Err("discovery.dns.names: give at least one name".into());
        }
        for (i, n) in self.names.iter().enumerate() {
            let at = format!("discovery.dns.names[{i}]");
            if n.filter.trim().is_empty() {
                return Err(format!("{at}.filter: empty"));
            }
            match (&n.host, n.port, &n.srv) {
                (Some(h), Some(p), None) if !h.trim().is_empty() && p != 0 => {}
                (Some(_), _, None) => {
                    return Err(format!("{at}: `host` needs a `port` above 0"));
                }
                (None, None, Some(s)) if !s.trim().is_empty() => {}
                (None, Some(_), Some(_)) => {
                    return Err(format!(
                        "{at}: an SRV record names its own port; drop `port`"
                    ));
                }
                _ => return Err(format!("{at}: give `host` and `port`, or `srv`")),
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSource {
    pub path: PathBuf,
    /// Default 2s.
    #[serde(default = "default_file_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_file_interval() -> Duration {
    Duration::from_secs(2)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSource {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Default `/sekisho/filters`.
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
}

fn default_etcd_prefix() -> String {
    sekisho_proto::registration::DEFAULT_ETCD_PREFIX.to_owned()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    P2c,
    P2cInFlight,
    RoundRobin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Failed calls in a row (the filter's fault: unavailable, internal, deadline, ...,
    /// not invalid_argument) that eject an endpoint. Default 5.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one adds as much. Default 30s.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection. Default 5m.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// The longest an endpoint that shed a call with a retry pushback
    /// (`grpc-retry-pushback-ms`) is passed over while a sibling can take its calls.
    /// Default 0s: pushbacks are ignored (resting did not pay where measured: see
    /// BENCHMARKS.md (e'')).
    #[serde(with = "humantime_serde")]
    pub max_rest: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_rest: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Retries allowed as a percentage of calls. Default 20.
    pub percent: f32,
    /// Retries allowed each second whatever the traffic. Default 10.
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            percent: 20.0,
            min_per_second: 10,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "127.0.0.1:8080".into(),
            chains_dir: None,
            chainstore: None,
            max_request_bytes: 8 * 1024 * 1024,
            max_in_flight: 4096,
            filters: BTreeMap::new(),
            aggregators: BTreeMap::new(),
            connections_per_endpoint: 2,
            describe_interval: Duration::from_secs(30),
            discovery: DiscoveryConfig::default(),
            balance: Balance::default(),
            outlier: OutlierConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
            callers: CallersConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFilter {
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAggregator {
    pub endpoint: String,
    /// Default 200ms.
    #[serde(default = "default_aggregator_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_aggregator_timeout() -> Duration {
    Duration::from_millis(200)
}

impl GatewayConfig {
    /// Loads `path` (if any) with `SEKISHO_*` environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, GatewayError> {
        let mut b = config::Config::builder();
        if let Some(p) = path {
            b = b.add_source(config::File::from(p));
        }
        b = b.add_source(
            config::Environment::with_prefix("SEKISHO")
                .separator("__")
                .try_parsing(true),
        );
        let cfg: GatewayConfig = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |m: String| Err(GatewayError::Config(m));
        if self.max_request_bytes < 1024 {
            return bad("max_request_bytes: must be at least 1024".into());
        }
        if self.chains_dir.is_some() && self.chainstore.is_some() {
            return bad("chains_dir and chainstore: give one source of chains, not both".into());
        }
        if !(1..=16).contains(&self.connections_per_endpoint) {
            return bad("connections_per_endpoint: must be between 1 and 16".into());
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight: must be at least 1".into());
        }
        self.callers.check().map_err(GatewayError::Config)?;
        if let Some(dns) = &self.discovery.dns {
            dns.check().map_err(GatewayError::Config)?;
        }
        if let Some(k) = &self.discovery.kubernetes {
            k.check().map_err(GatewayError::Config)?;
        }
        for (name, f) in &self.filters {
            if f.endpoints.is_empty() {
                return bad(format!(
                    "filters.{name}.endpoints: list at least one endpoint"
                ));
            }
            for e in &f.endpoints {
                if let Err(why) = sekisho_proto::registration::check_address(e) {
                    return bad(format!("filters.{name}.endpoints: {why}"));
                }
            }
        }
        if let Some(etcd) = &self.discovery.etcd {
            if etcd.endpoints.is_empty() {
                return bad("discovery.etcd.endpoints: list at least one etcd URL".into());
            }
            if !etcd.prefix.starts_with('/') {
                return bad("discovery.etcd.prefix: must start with /".into());
            }
        }
        if self.outlier.consecutive_failures == 0 {
            return bad("outlier.consecutive_failures: must be at least 1".into());
        }
        if self.outlier.base_ejection.is_zero()
            || self.outlier.max_ejection < self.outlier.base_ejection
        {
            return bad(
                "outlier: base_ejection must be above zero and max_ejection at least as long"
                    .into(),
            );
        }
        if !(0.0..=1000.0).contains(&self.retry_budget.percent) {
            return bad("retry_budget.percent: must be between 0 and 1000".into());
        }
        Ok(())
    }

    /// The JSON body limit that matches `max_request_bytes` once base64 is accounted for.
    pub fn max_json_bytes(&self) -> usize {
        self.max_request_bytes / 3 * 4 + 16 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_callers(yaml: &str) -> Result<(), String> {
        let callers: CallersConfig = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        GatewayConfig {
            callers,
            ..GatewayConfig::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }

    #[test]
    fn caller_limits_are_checked() {
        assert_eq!(with_callers("{}"), Ok(()));
        assert_eq!(
            with_callers(
                "{default: {max_in_flight: 8, rate: 2.5, burst: 5}, overrides: {a: {rate: 1}}}"
            ),
            Ok(())
        );
        for (yaml, says) in [
            (
                "{default: {max_in_flight: 0}}",
                "callers.default.max_in_flight: must be at least 1",
            ),
            (
                "{overrides: {a: {rate: 0}}}",
                "callers.overrides.a.rate: must be a number above 0",
            ),
            (
                "{overrides: {a: {rate: .nan}}}",
                "callers.overrides.a.rate: must be a number above 0",
            ),
            (
                "{default: {rate: 1, burst: 0}}",
                "callers.default.burst: must be at least 1",
            ),
            (
                "{default: {burst: 3}}",
                "callers.default.burst: needs a rate",
            ),
            (
                "{header: X-Caller}",
                "callers.header: `X-Caller` is not a lower-case header name",
            ),
            ("{header: 'a b'}", "is not a lower-case header name"),
            (
                "{max_callers: 0}",
                "callers.max_callers: must be at least 1",
            ),
        ] {
            let e = with_callers(yaml).unwrap_err();
            assert!(e.contains(says), "{yaml}: {e}");
        }
        assert!(
            with_callers("{default: {rate: 1, bursts: 2}}")
                .unwrap_err()
                .contains("unknown field `bursts`")
        );
    }
}
