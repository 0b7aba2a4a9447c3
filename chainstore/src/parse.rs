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
    nesting_check(text)?;
    serde_yaml_ng::from_str::<ChainSpec>(text).map_err(|e| {
        let loc = e.location();
        ParseError {
            message: e.to_string(),
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
        }
    })
}

/// How deep a chain document may nest (mappings and sequences, block or flow). A chain
/// itself nests six levels; the rest is for filters' config.
pub const MAX_NESTING: usize = 64;

/// Refuses a document nesting deeper than [`MAX_NESTING`] before libyaml (under
/// `serde_yaml_ng`) reads it. libyaml's scanner checks every open flow collection at each
/// token and reads the whole document before serde sees a level, so `[[[[…` costs the
/// square of its depth: 120,000 brackets (240 KB) took 41 s of CPU, 200,000 unclosed ones
/// 63 s, though serde then refuses the document at level 128. Below the limit the cost
/// is bounded: 100,000 entries (200 KB) inside 63 open levels parse in about 80 ms, at
/// one level in 50 ms; this check is about 15 of those. yaml-rust2, a port of the
/// same scanner, is read here event by event and stopped at the first level too deep (it
/// stops by itself at 255 levels of flow); its cost is linear below that.
///
/// Where yaml-rust2 cannot read the document, the part it did read was no deeper than
/// the limit, and what follows it is let through to libyaml (for libyaml's own error
/// message) only if it opens fewer than [`MAX_NESTING`] flow collections, so that no
/// level libyaml might see there is deeper than twice the limit.
fn nesting_check(text: &str) -> Result<(), ParseError> {
    use yaml_rust2::parser::{Event, Parser};
    let too_deep = |line: usize, column: usize| ParseError {
        message: format!("the document nests deeper than {MAX_NESTING} levels"),
        line: Some(line),
        column: Some(column),
    };
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => return Ok(()),
            Ok((Event::SequenceStart(..) | Event::MappingStart(..), mark)) => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_deep(mark.line(), mark.col() + 1));
                }
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => depth = depth.saturating_sub(1),
            Ok(_) => {}
            Err(e) => {
                // yaml-rust2 counts in characters, lines from 1 and columns from 0.
                let mark = e.marker();
                if e.info().contains("recursion limit") {
                    return Err(too_deep(mark.line(), mark.col() + 1));
                }
                let rest = text.chars().skip(mark.index());
                if rest.filter(|c| matches!(c, '[' | '{')).count() >= MAX_NESTING {
                    return Err(ParseError {
                        message: e.info().to_owned(),
                        line: Some(mark.line()),
                        column: Some(mark.col() + 1),
                    });
                }
                return Ok(());
            }
        }
    }
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

    /// A document whose filter config nests `levels` deep in all: the root mapping,
    /// `stages`, the stage, `filters`, the filter and `config` are six.
    fn nested(levels: usize, close: bool) -> String {
        let lists = levels - 6;
        let ends = if close {
            "]".repeat(lists)
        } else {
            String::new()
        };
        format!(
            "name: x\ncontent_types: [a/b]\nstages:\n  - id: a\n    filters:\n      - use: kw\n        config: {{x: {}1{ends}}}\n",
            "[".repeat(lists)
        )
    }

    #[test]
    fn documents_nesting_deeper_than_the_limit_are_refused_before_libyaml_reads_them() {
        assert!(parse_chain(&nested(MAX_NESTING, true)).is_ok());
        for doc in [
            nested(MAX_NESTING + 1, true),
            // 120,000 levels (240 KB): 41 s of libyaml's CPU before this check.
            nested(120_000, true),
            nested(120_000, false),
        ] {
            let e = parse_chain(&doc).unwrap_err();
            assert_eq!(e.message, "the document nests deeper than 64 levels");
            assert_eq!(e.line, Some(7));
        }
        let blocks: String = (0..=MAX_NESTING)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let e = parse_chain(&blocks).unwrap_err();
        assert_eq!(e.message, "the document nests deeper than 64 levels");
        assert_eq!(e.line, Some(MAX_NESTING + 1));
    }

    #[test]
    fn what_yaml_rust2_cannot_read_goes_to_libyaml_unless_it_could_nest_deep() {
        // yaml-rust2 stops at line 2; the few brackets after it leave libyaml's own
        // message to be told.
        let bad = "name: x\n content_types: [a/b]\n";
        let e = parse_chain(bad).unwrap_err();
        let libyaml = serde_yaml_ng::from_str::<ChainSpec>(bad).unwrap_err();
        assert_eq!(e.message, libyaml.to_string());
        let e = parse_chain(&format!("{bad}x: {}\n", "[".repeat(MAX_NESTING))).unwrap_err();
        assert_eq!(e.message, "mapping values are not allowed in this context");
        assert_eq!((e.line, e.column), (Some(2), Some(15)));
    }

    #[test]
    fn oversized_documents_are_refused_before_parsing() {
        let doc = "#".repeat(MAX_DOCUMENT_BYTES + 1);
        let e = parse_chain(&doc).unwrap_err();
        assert!(e.message.contains("limit"), "{}", e.message);
    }
}
