//! `keywords`: flags text containing words from a list. Matching is on word boundaries
//! and, unless asked otherwise, ignores case. Score = min(1, hits × score_per_hit).

use async_trait::async_trait;
use schemars::JsonSchema;
use sekisho_filter_sdk::{Filter, FilterError, Input, Verdict};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KeywordsConfig {
    /// Words or phrases to flag.
    pub words: Vec<String>,
    pub case_sensitive: bool,
    /// What one hit adds to the score.
    pub score_per_hit: f64,
    /// Longest text accepted, in bytes.
    pub max_text_bytes: usize,
}

impl Default for KeywordsConfig {
    fn default() -> Self {
        KeywordsConfig {
            words: Vec::new(),
            case_sensitive: false,
            score_per_hit: 1.0,
            max_text_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Keywords;

#[async_trait]
impl Filter for Keywords {
    type Config = KeywordsConfig;

    fn name(&self) -> &str {
        "keywords"
    }

    fn content_types(&self) -> Vec<String> {
        vec!["text/*".into()]
    }

    fn labels(&self) -> Vec<String> {
        vec!["hits".into()]
    }

    async fn apply(&self, input: Input, config: KeywordsConfig) -> Result<Verdict, FilterError> {
        let text = input.text()?;
        if text.len() > config.max_text_bytes {
            return Err(FilterError::InvalidInput(format!(
                "text is {} bytes; this filter's limit is {} (config max_text_bytes)",
                text.len(),
                config.max_text_bytes
            )));
        }
        let fold = |s: &str| {
            if config.case_sensitive {
                s.to_owned()
            } else {
                s.to_lowercase()
            }
        };
        let hay = fold(text);
        let mut hits = 0usize;
        let mut found = Vec::new();
        for w in &config.words {
            let needle = fold(w);
            if needle.is_empty() {
                continue;
            }
            let n = count_words(&hay, &needle);
            if n > 0 {
                found.push(w.clone());
            }
            hits += n;
        }
        let score = (hits as f64 * config.score_per_hit).clamp(0.0, 1.0);
        Ok(Verdict::score(score)
            .label("hits", hits as f64)
            .details(serde_json::json!({ "words": found })))
    }
}

/// Occurrences of `needle` in `hay` that start and end on word boundaries.
fn count_words(hay: &str, needle: &str) -> usize {
    let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    hay.match_indices(needle)
        .filter(|(i, m)| {
            boundary(hay[..*i].chars().next_back()) && boundary(hay[i + m.len()..].chars().next())
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_whole_words_only() {
        assert_eq!(count_words("spam, spammy spam!", "spam"), 2);
        assert_eq!(count_words("free money now", "free money"), 1);
        assert_eq!(count_words("nothing here", "spam"), 0);
    }
}
