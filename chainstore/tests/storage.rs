//! One suite for every storage backend. SQLite runs always; PostgreSQL joins when
//! `SEKISHO_TEST_POSTGRES_URL` names a database, as `scripts/test.sh` arranges (it starts
//! Debian's PostgreSQL); with `SEKISHO_REQUIRE_POSTGRES=1` a missing URL is a failure.

use std::sync::Arc;

use sekisho_chainstore::store::{ChainStorage, Expect, SqlStore, StoreError, Write};

fn write(name: &str, doc: Option<&str>, expect: Expect) -> Write {
    Write {
        name: name.into(),
        document: doc.map(str::to_owned),
        expect,
        author: "tester".into(),
        comment: String::new(),
    }
}

type Backend = (String, Arc<dyn ChainStorage>, Option<tempfile::TempDir>);

async fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("chains.db").display()
    );
    let mut v: Vec<Backend> = vec![(
        "sqlite".into(),
        Arc::new(SqlStore::connect(&url).await.unwrap()),
        Some(dir),
    )];
    match std::env::var("SEKISHO_TEST_POSTGRES_URL") {
        Ok(url) => v.push((
            "postgres".into(),
            Arc::new(SqlStore::connect(&url).await.unwrap()),
            None,
        )),
        Err(_) => assert!(
            std::env::var_os("SEKISHO_REQUIRE_POSTGRES").is_none(),
            "SEKISHO_REQUIRE_POSTGRES is set but SEKISHO_TEST_POSTGRES_URL is not"
        ),
    }
    v
}

#[tokio::test]
async fn versions_history_deletes_and_stale_writes() {
    for (backend, s, _dir) in backends().await {
        let name = format!("c-{}", std::process::id());
        let v1 = s
            .write(write(&name, Some("doc 1"), Expect::Absent))
            .await
            .unwrap();
        assert_eq!(v1.version, 1, "{backend}");
        assert!(matches!(
            s.write(write(&name, Some("again"), Expect::Absent)).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let v2 = s
            .write(write(&name, Some("doc 2"), Expect::Version(1)))
            .await
            .unwrap();
        assert_eq!((v2.version, v2.revision > v1.revision), (2, true));
        match s
            .write(write(&name, Some("stale"), Expect::Version(1)))
            .await
        {
            Err(StoreError::Conflict {
                expected: 1,
                current: 2,
                ..
            }) => {}
            other => panic!("{backend}: {other:?}"),
        }
        assert_eq!(s.get(&name, None).await.unwrap().document, "doc 2");
        assert_eq!(s.get(&name, Some(1)).await.unwrap().document, "doc 1");
        assert!(s.list().await.unwrap().iter().any(|c| c.name == name));

        let gone = s
            .write(write(&name, None, Expect::Version(2)))
            .await
            .unwrap();
        assert!(gone.deleted && gone.version == 3 && gone.document == "doc 2");
        assert!(matches!(
            s.get(&name, None).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(!s.list().await.unwrap().iter().any(|c| c.name == name));
        let history = s.versions(&name).await.unwrap();
        assert_eq!(
            history.iter().map(|c| c.version).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // Recreated after a delete: versions go on.
        let back = s
            .write(write(&name, Some("doc 4"), Expect::Absent))
            .await
            .unwrap();
        assert_eq!(back.version, 4);
        assert!(matches!(
            s.get(&name, Some(9)).await,
            Err(StoreError::NoSuchVersion { .. })
        ));
    }
}

#[tokio::test]
async fn changes_come_in_revision_order_and_resume_anywhere() {
    for (backend, s, _dir) in backends().await {
        let start = *s.committed().borrow();
        let mut revisions = Vec::new();
        for i in 0..5 {
            let n = format!("feed-{i}-{}", std::process::id());
            revisions.push(
                s.write(write(&n, Some("d"), Expect::Absent))
                    .await
                    .unwrap()
                    .revision,
            );
        }
        assert_eq!(
            *s.committed().borrow(),
            *revisions.last().unwrap(),
            "{backend}"
        );
        // Other tests write to the same database at the same time: look at ours only,
        // and check that the whole feed is in strict revision order.
        let mine = |v: Vec<sekisho_chainstore::store::StoredChain>| {
            assert!(
                v.windows(2).all(|w| w[0].revision < w[1].revision),
                "{backend}: out of order"
            );
            v.into_iter()
                .filter(|c| c.name.starts_with("feed-"))
                .map(|c| c.revision)
                .collect::<Vec<_>>()
        };
        assert_eq!(mine(s.changes_since(start, 1000).await.unwrap()), revisions);
        assert_eq!(
            mine(s.changes_since(revisions[2], 1000).await.unwrap()),
            &revisions[3..]
        );
        let page = s.changes_since(start, 2).await.unwrap();
        assert_eq!(page.len(), 2);
        assert!(page[0].revision > start);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_exactly_one_wins_per_version() {
    for (backend, s, _dir) in backends().await {
        let name = format!("race-{}", std::process::id());
        s.write(write(&name, Some("v1"), Expect::Absent))
            .await
            .unwrap();
        let tries = (0..8).map(|i| {
            let s = s.clone();
            let name = name.clone();
            tokio::spawn(async move {
                s.write(write(
                    &name,
                    Some(&format!("writer {i}")),
                    Expect::Version(1),
                ))
                .await
            })
        });
        let results = futures::future::join_all(tries).await;
        let wins = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(StoreError::Conflict { current: 2, .. }))))
            .count();
        assert_eq!((wins, conflicts), (1, 7), "{backend}: {results:?}");
        assert_eq!(s.get(&name, None).await.unwrap().version, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_wakes_the_others() {
    for (backend, a, _dir) in backends().await {
        if backend != "postgres" {
            continue; // replicas share a database only on PostgreSQL
        }
        let url = std::env::var("SEKISHO_TEST_POSTGRES_URL").unwrap();
        let b = SqlStore::connect(&url).await.unwrap();
        let mut woken = b.committed();
        let name = format!("replica-{}", std::process::id());
        let written = a
            .write(write(&name, Some("d"), Expect::Absent))
            .await
            .unwrap();
        // `b` made no write and does not poll: only the NOTIFY can move it.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            woken.wait_for(|r| *r >= written.revision),
        )
        .await
        .expect("the other replica heard of the write within 5s")
        .unwrap();
    }
}
