//! What discovery knows about filters, so that a write naming a filter nobody runs, a
//! filter that refuses the chain's content types, or a config override that breaks the
//! filter's JSON Schema is refused with the path to fix.
//!
//! Discovery belongs to the gateway; the chainstore asks a gateway's `ListFilters` (any
//! replica: they share one discovery configuration) and keeps the answer for a short
//! while. When no gateway answers, writes are checked without it and `Validate` says so
//! in its warnings: a chain that names a missing filter still cannot approve anything,
//! because the gateway sends a failed filter to `on_error` (REVIEW by default).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sekisho_proto::filter::v1::FilterDescriptor;
use sekisho_proto::gateway::v1::gateway_client::GatewayClient;
use sekisho_proto::gateway::v1::{ListFiltersRequest, ListFiltersResponse};
use tonic::transport::{Channel, Endpoint};

use crate::spec::ChainSpec;
use crate::validate::Problem;

/// The filters discovery knows, with what their descriptors say.
#[derive(Debug, Default)]
pub struct Catalog {
    /// `None`: endpoints are known but none has answered `Describe` yet.
    filters: HashMap<String, Option<Described>>,
}

#[derive(Debug)]
struct Described {
    content_types: Vec<String>,
    defaults: serde_json::Value,
    schema: Option<jsonschema::Validator>,
}

impl Catalog {
    pub fn from_list(list: ListFiltersResponse) -> Self {
        let filters = list
            .filters
            .into_iter()
            .map(|f| (f.name, f.descriptor.map(described)))
            .collect();
        Catalog { filters }
    }

    #[cfg(test)]
    fn from_descriptors(descriptors: impl IntoIterator<Item = FilterDescriptor>) -> Self {
        let filters = descriptors
            .into_iter()
            .map(|d| (d.name.clone(), Some(described(d))))
            .collect();
        Catalog { filters }
    }

    /// Every problem of `spec` against the known filters; empty when it fits.
    pub fn check(&self, spec: &ChainSpec) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, stage) in spec.stages.iter().enumerate() {
            for (j, f) in stage.filters.iter().enumerate() {
                let at = format!("stages[{i}].filters[{j}]");
                let Some(known) = self.filters.get(&f.filter) else {
                    let mut names: Vec<&str> = self.filters.keys().map(String::as_str).collect();
                    names.sort_unstable();
                    problems.push(Problem {
                        path: format!("{at}.use"),
                        message: format!(
                            "no filter named `{}` is known to discovery; known: {}",
                            f.filter,
                            if names.is_empty() {
                                "none".to_owned()
                            } else {
                                names.join(", ")
                            }
                        ),
                    });
                    continue;
                };
                let Some(d) = known else { continue };
                for (k, ct) in spec.content_types.iter().enumerate() {
                    let accepted = d
                        .content_types
                        .iter()
                        .any(|p| sekisho_proto::content_type_matches(p, ct));
                    if !accepted {
                        problems.push(Problem {
                            path: format!("{at}.use"),
                            message: format!(
                                "`{}` accepts {}, not `{ct}` (content_types[{k}] of this chain)",
                                f.filter,
                                d.content_types.join(", ")
                            ),
                        });
                    }
                }
                if let (Some(schema), Some(over)) = (&d.schema, &f.config) {
                    let mut merged = d.defaults.clone();
                    sekisho_proto::merge_config(&mut merged, over.clone());
                    for e in schema.iter_errors(&merged) {
                        problems.push(Problem {
                            path: format!("{at}.config{}", dotted(e.instance_path().as_str())),
                            message: e.to_string(),
                        });
                    }
                }
            }
        }
        problems
    }
}

fn described(d: FilterDescriptor) -> Described {
    let schema = serde_json::from_str::<serde_json::Value>(&d.config_schema)
        .ok()
        .and_then(|s| match jsonschema::validator_for(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(filter = %d.name, error = %e, "the filter's config schema does not compile; its config is not checked");
                None
            }
        });
    let defaults = serde_json::from_str(&d.default_config)
        .unwrap_or_else(|_| serde_json::Value::Object(Default::default()));
    Described {
        content_types: d.content_types,
        defaults,
        schema,
    }
}

/// `/nms/0/sigma` → `.nms[0].sigma`, the chain document's own path style.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').filter(|s| !s.is_empty()) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            out.push('.');
            out.push_str(&seg);
        }
    }
    out
}

/// How long an answer from the gateway is reused before asking again.
const FRESH: Duration = Duration::from_secs(2);
/// How long one `ListFilters` call may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A gateway's `ListFilters`, asked at most every [`FRESH`] and remembered.
pub struct GatewayCatalog {
    url: String,
    client: GatewayClient<Channel>,
    last: tokio::sync::Mutex<Option<(Instant, Arc<Catalog>)>>,
}

impl GatewayCatalog {
    pub fn new(url: &str) -> Result<Self, String> {
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("`{url}` is not a gateway URL: {e}"))?
            .connect_timeout(ASK_TIMEOUT)
            .connect_lazy();
        Ok(GatewayCatalog {
            url: url.to_owned(),
            client: GatewayClient::new(channel),
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The latest catalog: fresh, or the last one known when the gateway does not answer;
    /// an error only when it has never answered.
    pub async fn current(&self) -> Result<Arc<Catalog>, String> {
        let mut last = self.last.lock().await;
        if let Some((at, c)) = last.as_ref()
            && at.elapsed() < FRESH
        {
            return Ok(c.clone());
        }
        let mut client = self.client.clone();
        let asked = tokio::time::timeout(ASK_TIMEOUT, client.list_filters(ListFiltersRequest {}));
        match asked.await {
            Ok(Ok(r)) => {
                let c = Arc::new(Catalog::from_list(r.into_inner()));
                *last = Some((Instant::now(), c.clone()));
                Ok(c)
            }
            Ok(Err(e)) => self.stale(&last, e.message()),
            Err(_) => self.stale(&last, "no answer within 2 s"),
        }
    }

    fn stale(
        &self,
        last: &Option<(Instant, Arc<Catalog>)>,
        why: &str,
    ) -> Result<Arc<Catalog>, String> {
        match last {
            Some((at, c)) => {
                tracing::warn!(gateway = %self.url, error = why, age_s = at.elapsed().as_secs(), "ListFilters failed; checking filters against the last answer");
                Ok(c.clone())
            }
            None => Err(format!(
                "filters were not checked: the gateway at {} did not answer ListFilters ({why})",
                self.url
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(name: &str, types: &[&str], schema: serde_json::Value) -> FilterDescriptor {
        FilterDescriptor {
            name: name.into(),
            content_types: types.iter().map(|s| s.to_string()).collect(),
            config_schema: schema.to_string(),
            default_config: r#"{"threshold": 0.5, "nms": {"method": "linear"}}"#.into(),
            ..Default::default()
        }
    }

    fn catalog() -> Catalog {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                "nms": {"type": "object", "properties": {"method": {"enum": ["linear", "gaussian"]}},
                        "additionalProperties": false}
            },
            "additionalProperties": false
        });
        Catalog::from_descriptors([
            descriptor("face", &["image/jpeg", "image/png"], schema),
            descriptor("any-image", &["image/*"], serde_json::json!({})),
        ])
    }

    fn spec(content_types: &str, filters: &str) -> ChainSpec {
        let doc = format!(
            "name: c\ncontent_types: [{content_types}]\nstages:\n  - id: s\n    filters:\n{filters}"
        );
        crate::parse_chain(&doc).unwrap()
    }

    #[test]
    fn a_fitting_chain_has_no_problems() {
        let s = spec(
            "image/png",
            "      - use: face\n        config: {threshold: 0.7, nms: {method: gaussian}}\n      - use: any-image\n",
        );
        assert_eq!(catalog().check(&s), vec![]);
    }

    #[test]
    fn unknown_filters_are_named_with_the_known_ones() {
        let p = catalog().check(&spec("image/png", "      - use: fase\n"));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "stages[0].filters[0].use");
        assert!(p[0].message.contains("`fase`"), "{}", p[0].message);
        assert!(p[0].message.contains("any-image, face"), "{}", p[0].message);
    }

    #[test]
    fn content_types_the_filter_refuses_are_problems() {
        // `image/*` is wider than face's list, so some images would be refused.
        let p = catalog().check(&spec(
            "image/*, text/plain",
            "      - use: face\n      - use: any-image\n",
        ));
        let got: Vec<(&str, &str)> = p
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].1.contains("not `image/*`"), "{got:?}");
        assert!(got[1].1.contains("not `text/plain`"), "{got:?}");
        assert_eq!(got[2].0, "stages[0].filters[1].use");
        assert!(got[2].1.contains("not `text/plain`"), "{got:?}");
    }

    #[test]
    fn config_that_breaks_the_schema_is_named_at_its_field() {
        let p = catalog().check(&spec(
            "image/png",
            "      - use: face\n        config: {threshold: 2, nms: {method: cubic}, treshold: 1}\n",
        ));
        let mut paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "stages[0].filters[0].config",
                "stages[0].filters[0].config.nms.method",
                "stages[0].filters[0].config.threshold",
            ],
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.message.contains("treshold")),
            "the unknown key is named: {p:?}"
        );
    }

    #[test]
    fn filters_not_yet_described_are_only_checked_by_name() {
        let c = Catalog::from_list(ListFiltersResponse {
            filters: vec![sekisho_proto::gateway::v1::DiscoveredFilter {
                name: "later".into(),
                ..Default::default()
            }],
        });
        let s = spec("text/plain", "      - use: later\n        config: {x: 1}\n");
        assert_eq!(c.check(&s), vec![]);
    }

    #[test]
    fn pointers_become_document_paths() {
        assert_eq!(dotted(""), "");
        assert_eq!(dotted("/nms/0/a~1b"), ".nms[0].a/b");
    }
}
