//! The integration-test harness: [`TestGateway`] runs the real `sekisho gateway` binary
//! as a child process on port 0; [`TestFilter`] serves a filter from the test process on
//! a real socket; [`PythonFilter`] runs the Python example; [`TestChainstore`] runs
//! `sekisho chainstore`; [`DevProcess`] runs `sekisho dev`; [`LoadRun`] drives a gateway with the project's load generator
//! (`sekisho bench moderate`). Everything talks gRPC over loopback, as in production.

pub mod filters;
pub mod kube_fake;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use sekisho_filter_sdk::{Filter, FilterServer};
use sekisho_proto::filter::v1 as fproto;
use sekisho_proto::gateway::v1::{self as gproto, gateway_client::GatewayClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The `sekisho` binary, built once per test run (a no-op when it is up to date); or the
/// one `SEKISHO_BIN` names, as given (the benchmarks pass a release build).
pub fn sekisho_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SEKISHO_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "sekisho-cli", "--bin", "sekisho"])
            .current_dir(workspace())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the sekisho binary failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target"));
        target.join("debug").join("sekisho")
    })
    .clone()
}

/// Reads a child's stdout until it prints `listening on http://ADDR`; returns the URL.
pub async fn wait_for_listen_line(child: &mut Child, what: &str) -> anyhow::Result<String> {
    let urls = read_listen_lines(child, what, None).await?;
    Ok(urls.into_values().next().expect("one line read"))
}

/// A gateway process with a config and chains written to a temporary directory.
pub struct TestGateway {
    pub url: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// What a test gateway is started with.
#[derive(Default)]
pub struct GatewaySetup {
    /// Filter name → endpoint URLs.
    pub filters: Vec<(String, Vec<String>)>,
    /// Chain file name → contents.
    pub chains: Vec<(String, String)>,
    /// Remote aggregator name → endpoint URL.
    pub aggregators: Vec<(String, String)>,
    pub max_request_bytes: Option<usize>,
    /// Follow this chainstore instead of reading a chain directory.
    pub chainstore: Option<String>,
    /// More configuration keys (discovery, balance, outlier, ...), set last.
    pub extra: Vec<(String, serde_json::Value)>,
}

impl GatewaySetup {
    pub fn filter(mut self, name: &str, url: &str) -> Self {
        self.filters.push((name.into(), vec![url.into()]));
        self
    }

    /// A filter with several endpoints (replicas).
    pub fn filter_replicas(mut self, name: &str, urls: &[&str]) -> Self {
        self.filters
            .push((name.into(), urls.iter().map(|u| u.to_string()).collect()));
        self
    }

    /// Sets a top-level configuration key, e.g. `("outlier", json!({...}))`.
    pub fn config(mut self, key: &str, value: serde_json::Value) -> Self {
        self.extra.push((key.into(), value));
        self
    }

    pub fn chain(mut self, yaml: &str) -> Self {
        let n = self.chains.len();
        self.chains.push((format!("chain{n}.yaml"), yaml.into()));
        self
    }

    pub fn chain_file(mut self, file: &str, yaml: &str) -> Self {
        self.chains.push((file.into(), yaml.into()));
        self
    }

    pub fn chainstore(mut self, url: &str) -> Self {
        self.chainstore = Some(url.into());
        self
    }

    pub fn aggregator(mut self, name: &str, url: &str) -> Self {
        self.aggregators.push((name.into(), url.into()));
        self
    }

    pub async fn start(self) -> anyhow::Result<TestGateway> {
        TestGateway::start(self).await
    }
}

impl TestGateway {
    pub fn setup() -> GatewaySetup {
        GatewaySetup::default()
    }

    async fn start(setup: GatewaySetup) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let chains = dir.path().join("chains");
        std::fs::create_dir(&chains)?;
        for (file, yaml) in &setup.chains {
            std::fs::write(chains.join(file), yaml)?;
        }
        let mut config = serde_json::json!({
            "listen": "127.0.0.1:0",
            "chains_dir": chains,
            "describe_interval": "5s",
            "filters": {},
            "aggregators": {},
        });
        for (name, eps) in &setup.filters {
            config["filters"][name] = serde_json::json!({ "endpoints": eps });
        }
        for (name, ep) in &setup.aggregators {
            config["aggregators"][name] = serde_json::json!({ "endpoint": ep });
        }
        if let Some(m) = setup.max_request_bytes {
            config["max_request_bytes"] = m.into();
        }
        if let Some(url) = &setup.chainstore {
            config["chainstore"] = url.clone().into();
            config.as_object_mut().unwrap().remove("chains_dir");
        }
        for (key, value) in &setup.extra {
            config[key] = value.clone();
        }
        let config_path = dir.path().join("gateway.yaml");
        // JSON is YAML.
        std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)?;
        let mut child = Command::new(sekisho_bin())
            .args(["gateway", "--config"])
            .arg(&config_path)
            .env(
                "SEKISHO_LOG",
                std::env::var("SEKISHO_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning sekisho gateway")?;
        let url = wait_for_listen_line(&mut child, "sekisho gateway").await?;
        Ok(TestGateway { url, dir, child })
    }

    /// SIGTERM, and its exit status (an error after 30 s without one).
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        signal(&self.child, "TERM").await?;
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }

    /// Its `/metrics` page.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> GatewayClient<Channel> {
        GatewayClient::new(
            Channel::from_shared(self.url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }

    /// Moderates a text item through `chain`.
    pub async fn moderate_text(
        &self,
        chain: &str,
        text: &str,
    ) -> Result<gproto::ModerateResponse, tonic::Status> {
        self.moderate(request(
            chain,
            "text/plain",
            fproto::content::Payload::Text(text.into()),
        ))
        .await
    }

    pub async fn moderate(
        &self,
        req: gproto::ModerateRequest,
    ) -> Result<gproto::ModerateResponse, tonic::Status> {
        self.client()
            .await
            .moderate(req)
            .await
            .map(|r| r.into_inner())
    }

    /// The decision for a text sent through `chain` (`APPROVE`, `REVIEW`, ...).
    pub async fn decision(&self, chain: &str, text: &str) -> anyhow::Result<String> {
        let r = self.moderate_text(chain, text).await?;
        Ok(gproto::Decision::try_from(r.decision)?
            .as_str_name()
            .to_owned())
    }

    /// The endpoints the gateway knows for `filter`, by address.
    pub async fn endpoints(&self, filter: &str) -> anyhow::Result<Vec<gproto::Endpoint>> {
        let list = self
            .client()
            .await
            .list_filters(gproto::ListFiltersRequest {})
            .await?
            .into_inner();
        let mut eps: Vec<gproto::Endpoint> = list
            .filters
            .into_iter()
            .filter(|f| f.name == filter)
            .flat_map(|f| f.endpoints)
            .collect();
        eps.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(eps)
    }

    /// The endpoint of `filter` at `address`, as `ListFilters` shows it.
    pub async fn endpoint(&self, filter: &str, address: &str) -> anyhow::Result<gproto::Endpoint> {
        self.endpoints(filter)
            .await?
            .into_iter()
            .find(|e| e.address == address)
            .with_context(|| format!("no endpoint {address} of `{filter}`"))
    }

    /// Polls [`TestGateway::endpoints`] until `cond` holds (at most `within`).
    pub async fn wait_endpoints(
        &self,
        filter: &str,
        within: Duration,
        cond: impl Fn(&[gproto::Endpoint]) -> bool,
    ) -> anyhow::Result<Vec<gproto::Endpoint>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let eps = self.endpoints(filter).await?;
            if cond(&eps) {
                return Ok(eps);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("endpoints of `{filter}` never got there; last: {eps:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the gateway has a descriptor for every named filter.
    pub async fn wait_described(&self, names: &[&str]) -> anyhow::Result<()> {
        for _ in 0..100 {
            let list = self
                .client()
                .await
                .list_filters(gproto::ListFiltersRequest {})
                .await?
                .into_inner();
            if names.iter().all(|n| {
                list.filters
                    .iter()
                    .any(|f| f.name == *n && f.descriptor.is_some())
            }) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("filters {names:?} were not described within 10s")
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// A moderation request.
pub fn request(
    chain: &str,
    content_type: &str,
    payload: fproto::content::Payload,
) -> gproto::ModerateRequest {
    gproto::ModerateRequest {
        chain: chain.into(),
        content: Some(fproto::Content {
            content_type: content_type.into(),
            payload: Some(payload),
        }),
        ..Default::default()
    }
}

/// A filter served from the test process on a loopback port; stopped when dropped.
pub struct TestFilter {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestFilter {
    pub async fn start<F: Filter>(filter: F) -> TestFilter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(FilterServer::new(filter).serve_on(listener, async move {
            let _ = rx.await;
        }));
        TestFilter {
            url,
            stop: Some(tx),
        }
    }
}

impl Drop for TestFilter {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The Python example filter (`filters/examples/python/links_filter.py`).
pub struct PythonFilter {
    pub url: String,
    _child: Child,
}

impl PythonFilter {
    pub async fn start() -> anyhow::Result<PythonFilter> {
        let script = workspace().join("filters/examples/python/links_filter.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg(script)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning the Python filter (needs python3 with grpcio and grpcio-tools)")?;
        let url = wait_for_listen_line(&mut child, "the Python filter").await?;
        Ok(PythonFilter { url, _child: child })
    }
}

/// A one-stage chain `name` calling `noop` (no retries): approved unless the filter
/// cannot be called, which sends the item to REVIEW, never to APPROVE.
pub fn noop_chain(name: &str) -> String {
    format!(
        "name: {name}\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{{use: noop, timeout: 2s}}]\n    branches:\n      - when: \"score >= 0.5\"\n        decide: {{decision: REJECT, reason: flagged}}\ndefault_decision: APPROVE\n"
    )
}

/// The addresses of the endpoints in state `ready`.
pub fn ready_addresses(eps: &[gproto::Endpoint]) -> Vec<String> {
    eps.iter()
        .filter(|e| e.state == "ready")
        .map(|e| e.address.clone())
        .collect()
}

/// A built-in filter as its own process: `sekisho filter <name> [args]`.
pub struct FilterProcess {
    pub url: String,
    child: Child,
}

impl FilterProcess {
    pub async fn start(name: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(name, "127.0.0.1:0", args).await
    }

    /// Listening on `listen`, e.g. `127.0.0.2:PORT` for replicas that DNS names by address.
    pub async fn start_on(name: &str, listen: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(sekisho_bin())
            .args(["filter", name, "--listen", listen])
            .args(args)
            .env("SEKISHO_CACHE", cache_dir())
            .env(
                "SEKISHO_LOG",
                std::env::var("SEKISHO_LOG").unwrap_or_else(|_| "warn,ort=error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning sekisho filter {name}"))?;
        let url = wait_for_listen_line(&mut child, name).await?;
        Ok(FilterProcess { url, child })
    }

    /// The process's resident memory, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// The most resident memory the process has had (its high-water mark), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, as Kubernetes stops a pod; waits for the process to exit.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        signal(&self.child, "TERM").await?;
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }

    /// SIGKILL: the replica dies with calls in flight.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// Sends a signal by name (`TERM`, `STOP`, ...) to a child process.
pub async fn signal(child: &Child, name: &str) -> anyhow::Result<()> {
    let pid = child.id().context("the process has exited")?;
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// `sekisho dev` (chainstore, gateway, filters and edge in one process) on free ports,
/// with its data in a temporary directory.
pub struct DevProcess {
    /// The edge and web UI, `http://127.0.0.1:PORT`.
    pub ui: String,
    pub gateway: String,
    pub chainstore: String,
    _dir: tempfile::TempDir,
    _child: Child,
}

impl DevProcess {
    /// Starts it with `args` added and `env` set, and waits until it says it runs.
    ///
    /// It binds port 0 for all three and the addresses are read from what it prints
    /// (`sekisho ui|chainstore|gateway listening on http://ADDR`), so no other process
    /// can take a port between its choice and its use.
    pub async fn start(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(sekisho_bin())
            .args(["dev", "--listen", "127.0.0.1:0"])
            .args(["--chainstore-listen", "127.0.0.1:0"])
            .args(["--ui-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut urls = read_listen_lines(&mut child, "sekisho dev", Some("gateway")).await?;
        let mut take = |what: &str| {
            urls.remove(what)
                .with_context(|| format!("sekisho dev did not say where its {what} listens"))
        };
        Ok(DevProcess {
            ui: take("ui")?,
            chainstore: take("chainstore")?,
            gateway: take("gateway")?,
            _dir: dir,
            _child: child,
        })
    }
}

/// Reads a child's stdout for `sekisho PART listening on http://ADDR` lines until the one
/// for `last` (the first of them when `None`); returns the URLs by PART. The child's
/// stdout is drained afterwards so that it never blocks on a full pipe.
async fn read_listen_lines(
    child: &mut Child,
    what: &str,
    last: Option<&str>,
) -> anyhow::Result<HashMap<String, String>> {
    let stdout = child.stdout.take().context("stdout is piped")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut urls = HashMap::new();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(i) = line.find(" listening on http://") {
                let part = line[..i].trim_start_matches("sekisho ").to_owned();
                let url = line[i + " listening on ".len()..].trim().to_owned();
                let done = last.is_none_or(|l| l == part);
                urls.insert(part, url);
                if done {
                    return Ok::<_, std::io::Error>(true);
                }
            }
        }
        Ok(false)
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match found {
        Ok(Ok(true)) => Ok(urls),
        Ok(Ok(false)) => bail!("{what} exited before listening"),
        Ok(Err(e)) => bail!("{what}: {e}"),
        Err(_) => bail!("{what} did not start within 60s"),
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released), for a process that cannot be
/// told port 0 and say which it took (etcd, dnsmasq, a second address on one port).
///
/// Picked at random below Linux's ephemeral range (32768–60999): a port from that range,
/// which port 0 would give, can go to any process's next outgoing connection or port-0
/// bind before the one it was picked for binds it; a port below it goes only to whoever
/// names it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1_000 {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 12_000 + (random % 20_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 12000 and 32000 on 127.0.0.1")
}

/// A real DNS server (Debian's `dnsmasq`) on a free port, authoritative for
/// `sekisho.test`: names come from a hosts file that [`TestDns::set_hosts`] rewrites and
/// SRV records given at start; names not in the file answer NXDOMAIN.
pub struct TestDns {
    /// `127.0.0.1:PORT`, for `discovery.dns.nameservers`.
    pub server: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl TestDns {
    /// `srv`: `(name, target, port)` records.
    pub async fn start(hosts: &[(&str, &str)], srv: &[(&str, &str, u16)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let hosts_file = dir.path().join("hosts");
        std::fs::write(&hosts_file, hosts_text(hosts))?;
        let mut cmd = Command::new("/usr/sbin/dnsmasq");
        cmd.args([
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args(["--listen-address=127.0.0.1", "--local=/sekisho.test/"])
        .arg(format!("--port={port}"))
        .arg(format!("--addn-hosts={}", hosts_file.display()))
        .arg("--pid-file=")
        .arg("--log-facility=-");
        for (name, target, p) in srv {
            cmd.arg(format!("--srv-host={name},{target},{p}"));
        }
        // As root, dnsmasq would drop to `nobody`, who cannot read the temporary directory.
        if running_as_root() {
            cmd.arg("--user=root");
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning dnsmasq (Debian package dnsmasq-base)")?;
        // dnsmasq says `started` on stderr once it answers.
        let stderr = child.stderr.take().context("dnsmasq stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("started") {
                    return Ok(());
                }
                if line.contains("FAILED") || line.contains("failed") {
                    bail!("dnsmasq: {line}");
                }
            }
            bail!("dnsmasq exited")
        })
        .await
        .context("dnsmasq did not start within 10s")?;
        started?;
        // Keep draining its log so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(TestDns {
            server: format!("127.0.0.1:{port}"),
            dir,
            child,
        })
    }

    /// Replaces the hosts file and makes dnsmasq read it again (SIGHUP).
    pub async fn set_hosts(&self, hosts: &[(&str, &str)]) -> anyhow::Result<()> {
        std::fs::write(self.dir.path().join("hosts"), hosts_text(hosts))?;
        signal(&self.child, "HUP").await
    }

    /// Kills the server: queries time out from now on.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn hosts_text(hosts: &[(&str, &str)]) -> String {
    hosts
        .iter()
        .map(|(ip, name)| format!("{ip} {name}\n"))
        .collect()
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// A real etcd (Debian's `etcd-server`) on free ports with its data in a temporary
/// directory, for discovery tests.
pub struct TestEtcd {
    pub url: String,
    dir: tempfile::TempDir,
    peer: String,
    child: Option<Child>,
}

impl TestEtcd {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut etcd = TestEtcd {
            url,
            dir,
            peer,
            child: None,
        };
        etcd.start_again().await?;
        Ok(etcd)
    }

    /// Starts etcd (again, on the same ports and data) and waits until it answers.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("etcd is not installed (Debian package etcd-server)")?;
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "test"])
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("test={}", self.peer)])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning etcd")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = self.client().await
                && c.get("/", None).await.is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("etcd did not answer within 30s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills etcd; its data stays for [`TestEtcd::start_again`].
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        Ok(etcd_client::Client::connect([&self.url], Some(opts)).await?)
    }

    /// The keys under `prefix`, with their values.
    pub async fn keys(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut c = self.client().await?;
        let r = c
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }
}

/// The setup's download cache (ONNX Runtime, models): `SEKISHO_CACHE`, else the
/// workspace's `.sekisho/cache` (filled by `scripts/fetch-models.sh`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SEKISHO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".sekisho/cache"))
}

/// scikit-image's sample photos and two composed ones, written by the reference script
/// (`filters/images/reference/reference.py samples`) into a temporary directory.
pub fn sample_photos() -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new("python3")
        .arg(workspace().join("filters/images/reference/reference.py"))
        .arg("samples")
        .arg(dir.path())
        .output()?;
    if !out.status.success() {
        bail!(
            "reference.py samples failed (run scripts/setup.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dir)
}

/// A `sekisho chainstore` process on a SQLite file that outlives restarts.
pub struct TestChainstore {
    pub url: String,
    pub db: PathBuf,
    filters_from: Option<String>,
    child: Child,
}

impl TestChainstore {
    pub async fn start(db: &Path) -> anyhow::Result<Self> {
        Self::start_at(db, "127.0.0.1:0", None).await
    }

    /// A chainstore that checks filters against `gateway`'s discovery.
    pub async fn start_checking(db: &Path, gateway: &str) -> anyhow::Result<Self> {
        Self::start_at(db, "127.0.0.1:0", Some(gateway.to_owned())).await
    }

    async fn start_at(
        db: &Path,
        listen: &str,
        filters_from: Option<String>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(sekisho_bin());
        cmd.args(["chainstore", "--listen", listen, "--database"])
            .arg(format!("sqlite://{}?mode=rwc", db.display()));
        if let Some(g) = &filters_from {
            cmd.args(["--filters-from", g]);
        }
        let mut child = cmd
            .env("SEKISHO_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning sekisho chainstore")?;
        let url = wait_for_listen_line(&mut child, "sekisho chainstore").await?;
        Ok(TestChainstore {
            url,
            db: db.to_owned(),
            filters_from,
            child,
        })
    }

    /// Kills the process (no graceful shutdown) and starts it again on the same database
    /// and address.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        self.child.kill().await?;
        let _ = self.child.wait().await;
        let addr = self.url.trim_start_matches("http://").to_owned();
        TestChainstore::start_at(&self.db, &addr, self.filters_from.take()).await
    }

    /// SIGTERM, and its exit status (an error after 30 s without one).
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        signal(&self.child, "TERM").await?;
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }

    /// Kills the process, keeping what `restart` needs.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }

    /// Starts a stopped chainstore again on its database and address.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let addr = self.url.trim_start_matches("http://").to_owned();
        *self = TestChainstore::start_at(&self.db, &addr, self.filters_from.clone()).await?;
        Ok(())
    }

    pub async fn client(
        &self,
    ) -> sekisho_proto::chainstore::v1::chain_store_client::ChainStoreClient<Channel> {
        sekisho_proto::chainstore::v1::chain_store_client::ChainStoreClient::new(
            Channel::from_shared(self.url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    }
}

/// The project's load generator (`sekisho bench moderate --json`) running against a
/// gateway as its own process.
pub struct LoadRun {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl LoadRun {
    /// Starts the load and returns once requests are being sent. `args` are more
    /// `sekisho bench moderate` flags, e.g. `["--requests", "10000"]`.
    pub async fn start(gateway: &str, chain: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new(sekisho_bin())
            .args([
                "bench",
                "moderate",
                "--json",
                "--gateway",
                gateway,
                "--chain",
                chain,
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("spawning sekisho bench")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout is piped")?).lines();
        let started = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line == "load started" {
                    return Ok::<_, std::io::Error>(true);
                }
            }
            Ok(false)
        })
        .await;
        match started {
            Ok(Ok(true)) => Ok(LoadRun { child, lines }),
            Ok(Ok(false)) => bail!("sekisho bench exited before the load started"),
            Ok(Err(e)) => bail!("sekisho bench: {e}"),
            Err(_) => bail!("sekisho bench did not start within 60s"),
        }
    }

    /// Waits for the load to end; returns its JSON report (`ok`, `errors`,
    /// `first_error`, `outcomes`: chain_version, decision, reason, count).
    pub async fn finish(mut self) -> anyhow::Result<serde_json::Value> {
        let mut report = None;
        while let Some(line) = self.lines.next_line().await? {
            if line.starts_with('{') {
                report = Some(serde_json::from_str(&line)?);
            }
        }
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("sekisho bench failed: {status}");
        }
        report.context("sekisho bench printed no report")
    }
}
