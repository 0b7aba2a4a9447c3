//! `sekisho chains` against a real chainstore process.

use sekisho_tests::{TestChainstore, sekisho_bin};

fn chains(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(sekisho_bin())
        .args(["chains", "--chainstore", url, "--author", "cli-test"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn doc(reason: &str) -> String {
    format!(
        "name: cli\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{{use: keywords}}]\n    branches:\n      - when: \"score > 0.5\"\n        decide: {{decision: REVIEW, reason: {reason}}}\ndefault_decision: APPROVE\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_diff_history_rollback_delete() {
    let dir = tempfile::tempdir().unwrap();
    let cs = TestChainstore::start(&dir.path().join("chains.db"))
        .await
        .unwrap();
    let file = dir.path().join("cli.yaml");
    let file = file.to_str().unwrap();
    let url = cs.url.clone();
    let run = move |args: Vec<String>| {
        let url = url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                chains(&url, &args)
            })
            .await
            .unwrap()
        }
    };
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    std::fs::write(file, doc("first")).unwrap();
    let (ok, out, err) = run(a(&["apply", "-f", file])).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "chain cli created (version 1)");
    let (_, out, _) = run(a(&["apply", "-f", file])).await;
    assert_eq!(out.trim(), "chain cli unchanged (version 1)");

    std::fs::write(file, doc("second")).unwrap();
    let (_, out, _) = run(a(&["diff", "-f", file])).await;
    assert!(
        out.contains("-        decide: {decision: REVIEW, reason: first}"),
        "{out}"
    );
    assert!(
        out.contains("+        decide: {decision: REVIEW, reason: second}"),
        "{out}"
    );
    let (_, out, _) = run(a(&["apply", "-f", file, "-m", "tighter"])).await;
    assert_eq!(out.trim(), "chain cli configured (version 2)");

    let (_, out, _) = run(a(&["rollback", "cli", "--to", "1"])).await;
    assert!(out.contains("now version 3"), "{out}");
    let (_, out, _) = run(a(&["get", "cli"])).await;
    assert_eq!(out, doc("first"));
    let (_, out, _) = run(a(&["diff", "cli", "2", "3"])).await;
    assert!(
        out.contains("+        decide: {decision: REVIEW, reason: first}"),
        "{out}"
    );

    let (_, out, _) = run(a(&["list"])).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli ") && l.contains(" 3 ") && l.ends_with("cli-test")),
        "{out}"
    );
    let (_, out, _) = run(a(&["delete", "cli"])).await;
    assert_eq!(out.trim(), "chain cli deleted (history kept)");
    let (_, out, _) = run(a(&["history", "cli"])).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[2].contains("tighter"), "{out}");
    assert!(lines[4].contains("(deleted)"), "{out}");

    // A bad file is refused with where, and nothing is written.
    std::fs::write(file, doc("x").replace("filters:", "filtres:")).unwrap();
    let (ok, _, err) = run(a(&["apply", "-f", file])).await;
    assert!(!ok);
    assert!(
        err.contains("cli.yaml:5:5: ") && err.contains("unknown field `filtres`"),
        "{err}"
    );
    let (ok, _, err) = run(a(&["get", "cli"])).await;
    assert!(!ok && err.contains("chain `cli` does not exist"), "{err}");
}
