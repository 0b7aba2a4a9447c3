//! Parsing a chain document (YAML, of which JSON is a subset) with errors that say where.

use crate::spec::ChainSpec;

/// Why a document is not a chain, with where it went wrong when known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
    /// 1-based line and column, when the parser knows them.
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Largest chain document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Parses a YAML or JSON chain document. Unknown fields are errors.
pub fn parse_chain(text: &str) -> Result<ChainSpec, ParseError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ParseError {
            message: format!(
                "the chain document is {} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes",
                text.len()
            ),
            line: None,
            column: None,
        });
    }
    serde_yaml_ng::from_str::<ChainSpec>(text).map_err(|e| {
        let loc = e.location();
        ParseError {
            message: e.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::*;

    const PROFILE: &str = r#"
name: profile-photo
content_types: [image/jpeg, image/png]
defaults: {timeout: 800ms, retries: 1, on_error: review}
audit_sample_rate: 0.01
stages:
  - id: faces
    filters:
      - use: face-detect
        as: face
        config: {min_score: 0.5, nms: {method: gaussian, sigma: 0.5}}
    aggregate: max
    branches:
      - when: "filters.face.labels.face_count == 0.0"
        decide: {decision: REVIEW, reason: no_face}
  - id: content
    filters:
      - use: ng-image
        on_error: {score: 1.0}
      - use: ng-image-v2
        shadow: true
        on_error: skip
    aggregate: {builtin: weighted_mean, weights: {ng-image: 2}}
    branches:
      - when: "score >= 0.5"
        decide: {decision: REVIEW, reason: ng_content}
default_decision: APPROVE
"#;

    #[test]
    fn parses_the_design_example() {
        let c = parse_chain(PROFILE).unwrap();
        assert_eq!(c.name, "profile-photo");
        assert_eq!(
            c.defaults.timeout,
            Some(std::time::Duration::from_millis(800))
        );
        assert_eq!(c.defaults.on_error, Some(OnError::Review));
        assert_eq!(c.stages[0].filters[0].alias(), "face");
        assert_eq!(c.stages[1].filters[0].alias(), "ng-image");
        assert_eq!(c.stages[1].filters[0].on_error, Some(OnError::Score(1.0)));
        assert!(c.stages[1].filters[1].shadow);
        assert_eq!(c.default_decision, Decision::Approve);
        match &c.stages[1].aggregate {
            AggregateSpec::Builtin { name, weights, .. } => {
                assert_eq!(name, "weighted_mean");
                assert_eq!(weights["ng-image"], 2.0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn default_decision_is_review_when_absent() {
        let c = parse_chain("name: x\ncontent_types: [text/plain]\nstages: []\n").unwrap();
        assert_eq!(c.default_decision, Decision::Review);
    }

    #[test]
    fn unknown_fields_are_rejected_with_line_and_column() {
        let doc = "name: x\ncontent_types: [text/plain]\nstages:\n  - id: a\n    filters:\n      - usee: kw\n";
        let e = parse_chain(doc).unwrap_err();
        assert!(e.message.contains("unknown field `usee`"), "{}", e.message);
        assert_eq!(e.line, Some(6));
    }

    #[test]
    fn bad_on_error_names_what_is_allowed() {
        let doc = "name: x\ncontent_types: [a/b]\nstages:\n  - id: a\n    filters:\n      - use: kw\n        on_error: explode\n";
        let e = parse_chain(doc).unwrap_err();
        assert!(
            e.message.contains("`review`, `skip`, `fail`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn aggregate_needs_exactly_one_kind() {
        let doc = "name: x\ncontent_types: [a/b]\nstages:\n  - id: a\n    filters: [{use: kw}]\n    aggregate: {builtin: max, remote: r}\n";
        let e = parse_chain(doc).unwrap_err();
        assert!(e.message.contains("exactly one of"), "{}", e.message);
    }

    #[test]
    fn oversized_documents_are_refused_before_parsing() {
        let doc = "#".repeat(MAX_DOCUMENT_BYTES + 1);
        let e = parse_chain(&doc).unwrap_err();
        assert!(e.message.contains("limit"), "{}", e.message);
    }
}
