//! The pool's rules on endpoints whose standing is set by hand (no network): which
//! descriptor wins, who is picked, when an endpoint is ejected and for how long.

use super::*;

const MS: Duration = Duration::from_millis(1);

/// `outlier.max_rest` in these tests (off by default).
const MAX_REST: Duration = Duration::from_secs(1);

fn settings(balance: Balance) -> Arc<PoolSettings> {
    Arc::new(PoolSettings {
        connections: 1,
        balance,
        outlier: OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(75),
            max_rest: MAX_REST,
        },
        retry_budget: RetryBudgetConfig::default(),
        describe_interval: Duration::from_secs(30),
    })
}

fn descriptor(version: &str) -> Arc<FilterDescriptor> {
    Arc::new(FilterDescriptor {
        name: "noop".into(),
        version: version.into(),
        content_types: vec!["text/plain".into()],
        ..Default::default()
    })
}

/// Adds an endpoint that has answered Describe with `d`, without a tending task.
fn add(pool: &Arc<FilterPool>, port: u16, d: Arc<FilterDescriptor>) -> Arc<Endpoint> {
    let id = pool.next_id.fetch_add(1, Ordering::Relaxed);
    let e = Arc::new(
        Endpoint::new(
            id,
            &format!("http://127.0.0.1:{port}"),
            "static",
            1,
            pool.epoch,
        )
        .unwrap(),
    );
    {
        let mut s = e.lock();
        s.described = Some(d);
        s.tried = true;
    }
    pool.endpoints.write().unwrap().push(e.clone());
    pool.recompute();
    e
}

fn state(pool: &FilterPool, e: &Endpoint) -> String {
    let _ = pool;
    e.to_proto(Instant::now()).state
}

#[tokio::test]
async fn a_replica_of_another_version_is_refused_and_the_majority_wins() {
    let pool = FilterPool::new("noop".into(), settings(Balance::P2c));
    let a = add(&pool, 1, descriptor("1.0"));
    let b = add(&pool, 2, descriptor("1.1"));
    // One each: the first served stays.
    assert_eq!(state(&pool, &a), "ready");
    assert_eq!(state(&pool, &b), "refused");
    let why = b.to_proto(Instant::now()).last_error;
    assert!(
        why.contains("version `1.1` where its siblings have `1.0`"),
        "{why}"
    );
    // A second 1.1 replica makes 1.1 the majority: the pool switches, never mixes.
    let c = add(&pool, 3, descriptor("1.1"));
    assert_eq!(pool.descriptor().unwrap().version, "1.1");
    assert_eq!(
        [state(&pool, &a), state(&pool, &b), state(&pool, &c)],
        ["refused", "ready", "ready"]
    );
}

#[tokio::test]
async fn an_endpoint_claiming_another_filter_is_refused() {
    let pool = FilterPool::new("noop".into(), settings(Balance::P2c));
    let mut other = (*descriptor("1.0")).clone();
    other.name = "keywords".into();
    let e = add(&pool, 1, Arc::new(other));
    let p = e.to_proto(Instant::now());
    assert_eq!(p.state, "refused");
    assert!(
        p.last_error.contains("says it is filter `keywords`"),
        "{p:?}"
    );
    assert!(pool.descriptor().is_none());
}

#[tokio::test]
async fn p2c_picks_the_less_loaded_and_a_retry_goes_elsewhere() {
    let pool = FilterPool::new("noop".into(), settings(Balance::P2cInFlight));
    let busy = add(&pool, 1, descriptor("1.0"));
    let idle = add(&pool, 2, descriptor("1.0"));
    let _calls: Vec<InFlight> = (0..3).map(|_| busy.start_call()).collect();
    let far = Instant::now() + Duration::from_secs(1);
    for _ in 0..50 {
        // With two endpoints p2c compares both: the idle one always wins.
        let c = pool.pick(&[], far).await.unwrap();
        assert_eq!(c.endpoint().id, idle.id);
    }
    // A retry avoids what it tried, even when that is the less loaded...
    let c = pool.pick(&[idle.id], far).await.unwrap();
    assert_eq!(c.endpoint().id, busy.id);
    // ...and goes back to it when nothing else is up.
    busy.set_usable(false);
    let c = pool.pick(&[idle.id], far).await.unwrap();
    assert_eq!(c.endpoint().id, idle.id);
}

#[tokio::test]
async fn p2c_weighs_calls_in_flight_by_latency() {
    let pool = FilterPool::new("noop".into(), settings(Balance::P2c));
    let slow = add(&pool, 1, descriptor("1.0"));
    let fast = add(&pool, 2, descriptor("1.0"));
    slow.observe(Duration::from_millis(10), false);
    fast.observe(Duration::from_millis(1), false);
    let far = Instant::now() + Duration::from_secs(1);
    // Idle, the fast one is cheaper; with 8 calls on it (9 × 1 ms) it is still cheaper
    // than the idle slow one (1 × 10 ms); with 10 (11 × 1 ms) it is not.
    let mut calls: Vec<InFlight> = Vec::new();
    assert_eq!(pool.pick(&[], far).await.unwrap().endpoint().id, fast.id);
    calls.extend((0..8).map(|_| fast.start_call()));
    assert_eq!(pool.pick(&[], far).await.unwrap().endpoint().id, fast.id);
    calls.extend((0..2).map(|_| fast.start_call()));
    assert_eq!(pool.pick(&[], far).await.unwrap().endpoint().id, slow.id);
    drop(calls);
    // A peak is taken at once; faster calls bring the estimate down only gradually.
    fast.observe(Duration::from_millis(50), false);
    assert_eq!(pool.pick(&[], far).await.unwrap().endpoint().id, slow.id);
    // A failure counts as at least twice the estimate.
    let before = slow.cost(Instant::now());
    slow.observe(Duration::from_micros(10), true);
    assert!(slow.cost(Instant::now()) >= 1.9 * before);
}

#[tokio::test]
async fn round_robin_takes_turns_whatever_the_load() {
    let pool = FilterPool::new("noop".into(), settings(Balance::RoundRobin));
    let a = add(&pool, 1, descriptor("1.0"));
    let b = add(&pool, 2, descriptor("1.0"));
    let _calls: Vec<InFlight> = (0..3).map(|_| a.start_call()).collect();
    let far = Instant::now() + Duration::from_secs(1);
    let mut picks = Vec::new();
    for _ in 0..4 {
        picks.push(pool.pick(&[], far).await.unwrap().endpoint().id);
    }
    assert_eq!(picks.iter().filter(|&&id| id == a.id).count(), 2);
    assert_eq!(picks.iter().filter(|&&id| id == b.id).count(), 2);
}

#[tokio::test]
async fn five_failures_in_a_row_eject_for_longer_each_time_but_never_the_last() {
    let pool = FilterPool::new("noop".into(), settings(Balance::P2c));
    let bad = add(&pool, 1, descriptor("1.0"));
    let good = add(&pool, 2, descriptor("1.0"));
    let unavailable = Status::unavailable("connection refused");
    // An item's fault does not count, and a success resets the count.
    for _ in 0..4 {
        pool.record(&bad, Err(&unavailable), MS);
    }
    pool.record(&bad, Err(&Status::invalid_argument("not an image")), MS);
    for _ in 0..4 {
        pool.record(&bad, Err(&unavailable), MS);
    }
    pool.record(&bad, Ok(()), MS);
    assert_eq!(state(&pool, &bad), "ready");
    for _ in 0..5 {
        pool.record(&bad, Err(&unavailable), MS);
    }
    let p = bad.to_proto(Instant::now());
    assert_eq!(p.state, "ejected");
    assert_eq!(p.ejections, 1);
    assert!((29_000..=30_000).contains(&p.ejected_for_ms), "{p:?}");
    assert!(p.last_error.contains("connection refused"), "{p:?}");
    // Ejected endpoints are not picked.
    let far = Instant::now() + Duration::from_secs(1);
    for _ in 0..20 {
        assert_eq!(pool.pick(&[], far).await.unwrap().endpoint().id, good.id);
    }
    // Back after its time; failing again ejects it for twice as long, then the cap.
    bad.eject_until(Instant::now());
    {
        let mut s = bad.lock();
        s.last_ejection_end = Some(Instant::now());
    }
    for _ in 0..5 {
        pool.record(&bad, Err(&unavailable), MS);
    }
    let p = bad.to_proto(Instant::now());
    assert_eq!((p.state.as_str(), p.ejections), ("ejected", 2));
    assert!((59_000..=60_000).contains(&p.ejected_for_ms), "{p:?}");
    bad.eject_until(Instant::now());
    for _ in 0..5 {
        pool.record(&bad, Err(&unavailable), MS);
    }
    let p = bad.to_proto(Instant::now());
    assert!((74_000..=75_000).contains(&p.ejected_for_ms), "{p:?}");
    // The last endpoint taking traffic is never ejected, however it fails.
    for _ in 0..20 {
        pool.record(&good, Err(&unavailable), MS);
    }
    assert_eq!(state(&pool, &good), "ready");
}

/// An endpoint shedding load (RESOURCE_EXHAUSTED: its queue is full, or too long for the
/// deadline) is busy, not broken: however many sheds in a row, it is not ejected, and a
/// shed neither counts toward a later ejection nor clears one that is building. Its load
/// estimate pays for each shed, so p2c sends it less.
#[tokio::test]
async fn an_endpoint_shedding_load_is_not_ejected_but_costs_more() {
    let pool = FilterPool::new("noop".into(), settings(Balance::P2c));
    let busy = add(&pool, 1, descriptor("1.0"));
    let calm = add(&pool, 2, descriptor("1.0"));
    pool.record(&busy, Ok(()), MS);
    pool.record(&calm, Ok(()), MS);
    let shed = Status::resource_exhausted("the model cannot answer before this call's deadline");
    for _ in 0..20 {
        pool.record(&busy, Err(&shed), MS);
    }
    let p = busy.to_proto(Instant::now());
    assert_eq!((p.state.as_str(), p.ejections), ("ready", 0), "{p:?}");
    assert!(p.last_error.contains("deadline"), "{p:?}");
    let now = Instant::now();
    assert!(
        busy.cost(now) > calm.cost(now) * 100.0,
        "sheds raise the load estimate"
    );
    // Four real failures, sheds in between, then a fifth: ejected (sheds did not reset).
    let unavailable = Status::unavailable("connection refused");
    for _ in 0..4 {
        pool.record(&busy, Err(&unavailable), MS);
        pool.record(&busy, Err(&shed), MS);
    }
    assert_eq!(state(&pool, &busy), "ready");
    pool.record(&busy, Err(&unavailable), MS);
    assert_eq!(state(&pool, &busy), "ejected");
}

/// An endpoint that sheds a call with a retry pushback is sent nothing for that long
/// (at most `MAX_REST`) while a sibling can take the calls, under every balance; when
/// every endpoint is resting, calls still go out; and a shed without a pushback rests
/// nothing.
#[tokio::test]
async fn an_endpoint_that_pushes_back_rests_while_a_sibling_takes_its_calls() {
    for balance in [Balance::P2c, Balance::P2cInFlight, Balance::RoundRobin] {
        let pool = FilterPool::new("noop".into(), settings(balance));
        let busy = add(&pool, 1, descriptor("1.0"));
        let calm = add(&pool, 2, descriptor("1.0"));
        let far = Instant::now() + Duration::from_secs(5);
        let picks = |n: usize| {
            let (pool, busy) = (pool.clone(), busy.id);
            async move {
                let mut to_busy = 0;
                for _ in 0..n {
                    let c = pool.pick(&[], far).await.unwrap();
                    to_busy += usize::from(c.endpoint().id == busy);
                }
                to_busy
            }
        };
        // A refused attempt, as the call's stack reports it, `spent` into the call.
        let shed = |e: &Arc<Endpoint>, st: &Status, spent: u64| {
            pool.record(e, Err(st), MS);
            pool.heed_pushback(e, st, Duration::from_millis(spent));
        };
        // A shed without a pushback rests nothing: round robin still takes turns.
        shed(&busy, &Status::resource_exhausted("full"), 0);
        if balance == Balance::RoundRobin {
            assert_eq!(picks(10).await, 5);
        }
        let pushback = |ms| {
            sekisho_proto::with_retry_pushback(
                Status::resource_exhausted("queue too long"),
                Duration::from_millis(ms),
            )
        };
        // A retry's pushback is for a call with as little time left as it had: a new
        // call, with the `spent` more, fits that much sooner.
        shed(&busy, &pushback(300), 300);
        assert!(!busy.resting_at(Instant::now()));
        shed(&busy, &pushback(300), 250);
        let listed = busy.to_proto(Instant::now());
        assert!((1..=50).contains(&listed.resting_for_ms), "{listed:?}");
        shed(&busy, &pushback(300), 0);
        assert!(busy.resting_at(Instant::now()));
        // Listed as resting, still `ready`; its sibling not.
        let listed = busy.to_proto(Instant::now());
        assert!((1..=300).contains(&listed.resting_for_ms), "{listed:?}");
        assert_eq!(listed.state, "ready");
        assert_eq!(calm.to_proto(Instant::now()).resting_for_ms, 0);
        assert_eq!(
            picks(50).await,
            0,
            "{balance:?}: calls went to the resting one"
        );
        // A retry that tried the calm one goes to the resting one: an endpoint it has
        // not tried comes first.
        let c = pool.pick(&[calm.id], far).await.unwrap();
        assert_eq!(c.endpoint().id, busy.id);
        // Everyone resting: calls still go out.
        shed(&calm, &pushback(300), 0);
        assert!(pool.pick(&[], far).await.is_ok());
        // A pushback of a minute rests it for MAX_REST.
        shed(&busy, &pushback(60_000), 0);
        assert!(busy.to_proto(Instant::now()).resting_for_ms <= MAX_REST.as_millis() as u64);
        let later = Instant::now() + MAX_REST + Duration::from_millis(10);
        assert!(!busy.resting_at(later));
        assert!(busy.resting_at(Instant::now() + MAX_REST - Duration::from_millis(50)));
        // It takes calls again once the rest is over.
        assert!(!calm.resting_at(Instant::now() + Duration::from_millis(400)));
    }
    // By default (`outlier.max_rest: 0s`) pushbacks are ignored.
    let mut s = (*settings(Balance::RoundRobin)).clone();
    s.outlier = OutlierConfig::default();
    let pool = FilterPool::new("noop".into(), Arc::new(s));
    let e = add(&pool, 1, descriptor("1.0"));
    let st = sekisho_proto::with_retry_pushback(
        Status::resource_exhausted("queue too long"),
        Duration::from_millis(300),
    );
    pool.record(&e, Err(&st), MS);
    pool.heed_pushback(&e, &st, Duration::ZERO);
    assert!(!e.resting_at(Instant::now()));
}

#[tokio::test]
async fn with_nothing_ready_the_error_says_why_each_endpoint_is_out() {
    let pool = FilterPool::new("noop".into(), settings(Balance::P2c));
    let far = Instant::now() + Duration::from_secs(1);
    let e = pool.pick(&[], far).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("discovery has found none"), "{e:?}");
    let a = add(&pool, 1, descriptor("1.0"));
    {
        let mut s = a.lock();
        s.health = Health::NotServing;
    }
    pool.recompute();
    let e = pool.pick(&[], far).await.unwrap_err();
    assert!(
        e.message().contains("http://127.0.0.1:1 not_serving"),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_retry_budget_allows_a_share_of_calls_and_then_refuses() {
    let mut s = (*settings(Balance::P2c)).clone();
    s.retry_budget = RetryBudgetConfig {
        percent: 20.0,
        min_per_second: 0,
    };
    let pool = FilterPool::new("noop".into(), Arc::new(s));
    for _ in 0..100 {
        pool.deposit();
    }
    let allowed = (0..100).take_while(|_| pool.withdraw_retry()).count();
    assert_eq!(allowed, 20);
}

#[tokio::test]
async fn endpoints_are_counted_by_the_provider_they_said_and_what_is_no_longer_served_reads_zero() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let on = |d: &Arc<FilterDescriptor>, provider: &str| {
        let mut d = (**d).clone();
        d.info
            .insert("execution_provider".into(), provider.to_owned());
        Arc::new(d)
    };
    let value = |series: String| -> Option<f64> {
        let text = handle.render();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .map(|v| v.parse().unwrap())
    };
    let gauge = |provider: &str| {
        value(format!(
            "{}{{filter=\"noop\",execution_provider=\"{provider}\"}}",
            m::FILTER_ENDPOINTS_BY_PROVIDER
        ))
    };
    let info = |version: &str, provider: &str| {
        value(format!(
            "{}{{filter=\"noop\",version=\"{version}\",execution_provider=\"{provider}\"}}",
            m::FILTER_INFO
        ))
    };
    metrics::with_local_recorder(&recorder, || {
        let pool = FilterPool::new("noop".into(), settings(Balance::P2c));
        let d = descriptor("1.0");
        let a = add(&pool, 1, on(&d, "cuda"));
        add(&pool, 2, on(&d, "cuda"));
        let c = add(&pool, 3, on(&d, "cpu"));
        // A replica of another version is refused: not counted.
        add(&pool, 4, on(&descriptor("2.0"), "cuda"));
        assert_eq!((gauge("cuda"), gauge("cpu")), (Some(2.0), Some(1.0)));
        assert_eq!(
            (info("1.0", "cuda"), info("1.0", "cpu")),
            (Some(1.0), Some(1.0))
        );
        assert_eq!(
            info("2.0", "cuda"),
            None,
            "a refused replica is not what the filter runs"
        );

        // The CPU replica comes back on its GPU; one GPU replica goes unreachable.
        c.lock().described = Some(on(&d, "cuda"));
        a.lock().unreachable = "Describe failed".into();
        pool.recompute();
        assert_eq!((gauge("cuda"), gauge("cpu")), (Some(2.0), Some(0.0)));
        assert_eq!(
            (info("1.0", "cuda"), info("1.0", "cpu")),
            (Some(1.0), Some(0.0))
        );
        assert_eq!(gauge("none"), None);
        // What reads 0 is no longer tracked, and stays 0.
        pool.recompute();
        assert_eq!((gauge("cuda"), gauge("cpu")), (Some(2.0), Some(0.0)));
        assert_eq!(
            *pool.served.lock().unwrap(),
            BTreeSet::from([("1.0".to_owned(), "cuda".to_owned())])
        );
    });
}
