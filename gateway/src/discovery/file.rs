//! A watched file of endpoints, re-read every `interval` and used when it changes: the
//! form that config-management tools and sidecars write.
//!
//! ```yaml
//! noop: [http://10.0.0.5:50061, http://10.0.0.6:50061]
//! face-detect:
//!   - http://10.0.1.7:50061
//! ```
//!
//! A file that cannot be read or parsed leaves the last good list in use; a bad address
//! is reported and skipped, the rest used.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Discovery, FoundEndpoint, ReportOnce, SourceEvent};

#[derive(Debug, Clone)]
pub struct FileDiscovery {
    pub path: PathBuf,
    pub interval: Duration,
}

/// Reads the file's text into endpoints and the problems of the entries left out.
pub fn parse(text: &str) -> Result<(Vec<FoundEndpoint>, Vec<String>), String> {
    if text.trim().is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let map: BTreeMap<String, Vec<String>> = serde_yaml_ng::from_str(text)
        .map_err(|e| format!("not a map of filter name to a list of addresses: {e}"))?;
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for (filter, addresses) in map {
        for address in addresses {
            match sekisho_proto::registration::check_address(&address) {
                Ok(()) => found.push(FoundEndpoint {
                    filter: filter.clone(),
                    address,
                }),
                Err(e) => problems.push(format!("{filter}: {e}")),
            }
        }
    }
    Ok((found, problems))
}

impl Discovery for FileDiscovery {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn watch(self: Box<Self>) -> BoxStream<'static, SourceEvent> {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last_text: Option<String> = None;
            let mut reports = ReportOnce::default();
            let path = self.path.display().to_string();
            loop {
                let event = match tokio::fs::read_to_string(&self.path).await {
                    Err(e) => {
                        let why = format!("cannot read {path}: {e}");
                        let first = reports.first(&why);
                        reports.keep_only(std::slice::from_ref(&why));
                        last_text = None;
                        first.then(|| {
                            tracing::warn!(file = %path, error = %e, "endpoint file unreadable; keeping the last list");
                            SourceEvent::Trouble(why)
                        })
                    }
                    Ok(text) if Some(&text) == last_text.as_ref() => None,
                    Ok(text) => {
                        let parsed = parse(&text);
                        last_text = Some(text);
                        match parsed {
                            Ok((found, problems)) => {
                                for p in &problems {
                                    if reports.first(p) {
                                        tracing::warn!(file = %path, problem = %p, "endpoint left out");
                                    }
                                }
                                reports.keep_only(&problems);
                                Some(SourceEvent::Endpoints(found))
                            }
                            Err(e) => {
                                let why = format!("{path}: {e}");
                                tracing::warn!(file = %path, error = %e, "endpoint file malformed; keeping the last list");
                                Some(SourceEvent::Trouble(why))
                            }
                        }
                    }
                };
                if let Some(ev) = event
                    && tx.send(ev).await.is_err()
                {
                    return;
                }
                tokio::time::sleep(self.interval).await;
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_entries_are_used_and_bad_ones_named() {
        let (found, problems) =
            parse("noop: [http://127.0.0.1:1, 'tcp://x:2']\nkeywords:\n  - http://h:3\n").unwrap();
        let addrs: Vec<_> = found.iter().map(|e| (&*e.filter, &*e.address)).collect();
        assert_eq!(
            addrs,
            [("keywords", "http://h:3"), ("noop", "http://127.0.0.1:1")]
        );
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("noop: address `tcp://x:2`"),
            "{problems:?}"
        );
        assert!(parse("[1, 2]").unwrap_err().contains("not a map"));
        assert_eq!(parse("  \n").unwrap().0, []);
    }

    #[tokio::test]
    async fn a_changed_file_is_seen_and_a_broken_one_keeps_the_last_list() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.yaml");
        std::fs::write(&path, "noop: [http://a:1]\n").unwrap();
        let mut s = Box::new(FileDiscovery {
            path: path.clone(),
            interval: Duration::from_millis(20),
        })
        .watch();
        let first = s.next().await.unwrap();
        assert_eq!(
            first,
            SourceEvent::Endpoints(vec![FoundEndpoint {
                filter: "noop".into(),
                address: "http://a:1".into()
            }])
        );
        std::fs::write(&path, "noop: [").unwrap();
        assert!(
            matches!(s.next().await.unwrap(), SourceEvent::Trouble(m) if m.contains("malformed") || m.contains("not a map"))
        );
        std::fs::write(&path, "noop: [http://a:1, http://b:2]\n").unwrap();
        match s.next().await.unwrap() {
            SourceEvent::Endpoints(e) => assert_eq!(e.len(), 2),
            other => panic!("{other:?}"),
        }
    }
}
