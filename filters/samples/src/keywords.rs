//! `keywords`: flags text containing words from a list. Matching is on word boundaries
//! and, unless asked otherwise, ignores case (both sides lower-cased). Every occurrence
//! counts, overlapping ones too ("ab ab" twice in "ab ab ab"); words that are the same
//! once lower-cased count each occurrence once. Score = min(1, hits × score_per_hit).
//! The text is read once, whatever the number of words (an Aho-Corasick automaton per
//! config, kept for the next call).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aho_corasick::AhoCorasick;
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

/// The filter. Clones share the matchers built for recent configs: building one is
/// most of the work on a short text (2,000 words: ~2 ms to build, microseconds to read a
/// comment), and a chain sends the same config with every item.
#[derive(Debug, Clone, Default)]
pub struct Keywords {
    matchers: Arc<Mutex<Vec<Arc<Matcher>>>>,
}

/// Matchers kept, the most recently used first.
const MATCHERS_KEPT: usize = 16;

impl Keywords {
    fn matcher(&self, config: &KeywordsConfig) -> Result<Arc<Matcher>, FilterError> {
        let same = |m: &Arc<Matcher>| {
            m.case_sensitive == config.case_sensitive && m.source == config.words
        };
        {
            let mut kept = self.matchers.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = kept.iter().position(same) {
                let m = kept.remove(i);
                kept.insert(0, m.clone());
                return Ok(m);
            }
        }
        // Built outside the lock: two calls may build the same one; the second is kept.
        let m = Arc::new(Matcher::new(&config.words, config.case_sensitive)?);
        let mut kept = self.matchers.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|k| !same(k));
        kept.insert(0, m.clone());
        kept.truncate(MATCHERS_KEPT);
        Ok(m)
    }
}

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
        let matcher = self.matcher(&config)?;
        let hay = matcher.fold(text);
        let (hits, found) = matcher.count(&hay);
        let found: Vec<&String> = found.into_iter().map(|i| &config.words[i]).collect();
        let score = (hits as f64 * config.score_per_hit).clamp(0.0, 1.0);
        Ok(Verdict::score(score)
            .label("hits", hits as f64)
            .details(serde_json::json!({ "words": found })))
    }
}

/// A config's words made into one Aho-Corasick automaton, so that a text is read once
/// however many words there are (one search per word was words × text: 2,000 words over
/// 1 MiB took 0.3 s). Words that fold to the same text are one pattern: a word listed
/// twice, or as "Spam" and "spam" without `case_sensitive`, counts each hit once.
#[derive(Debug)]
struct Matcher {
    /// The configured words it was built from.
    source: Vec<String>,
    automaton: AhoCorasick,
    /// For each pattern, the indexes of the configured words it stands for.
    words: Vec<Vec<usize>>,
    case_sensitive: bool,
}

impl Matcher {
    fn new(words: &[String], case_sensitive: bool) -> Result<Matcher, FilterError> {
        let mut patterns: Vec<String> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut of_pattern: Vec<Vec<usize>> = Vec::new();
        for (i, w) in words.iter().enumerate() {
            let folded = fold(w, case_sensitive);
            if folded.is_empty() {
                continue;
            }
            let p = *index.entry(folded.clone()).or_insert_with(|| {
                patterns.push(folded);
                of_pattern.push(Vec::new());
                patterns.len() - 1
            });
            of_pattern[p].push(i);
        }
        let automaton = AhoCorasick::new(&patterns)
            .map_err(|e| FilterError::InvalidInput(format!("config words: {e}")))?;
        Ok(Matcher {
            source: words.to_vec(),
            automaton,
            words: of_pattern,
            case_sensitive,
        })
    }

    fn fold<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.case_sensitive {
            Cow::Borrowed(text)
        } else {
            Cow::Owned(text.to_lowercase())
        }
    }

    /// Occurrences of the words in `hay` (already folded) that start and end on word
    /// boundaries, overlapping ones included, and the configured words that occur.
    fn count(&self, hay: &str) -> (usize, Vec<usize>) {
        let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        let mut seen = vec![false; self.words.len()];
        let mut hits = 0;
        for m in self.automaton.find_overlapping_iter(hay) {
            if boundary(hay[..m.start()].chars().next_back())
                && boundary(hay[m.end()..].chars().next())
            {
                hits += 1;
                seen[m.pattern().as_usize()] = true;
            }
        }
        let mut found: Vec<usize> = (0..self.words.len())
            .filter(|&p| seen[p])
            .flat_map(|p| self.words[p].iter().copied())
            .collect();
        found.sort_unstable();
        (hits, found)
    }
}

fn fold(s: &str, case_sensitive: bool) -> String {
    if case_sensitive {
        s.to_owned()
    } else {
        s.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(text: &str, words: &[&str], case_sensitive: bool) -> (usize, Vec<usize>) {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let m = Matcher::new(&words, case_sensitive).unwrap();
        m.count(&m.fold(text))
    }

    /// Every byte offset of `hay` where `needle` starts on a word boundary and ends on
    /// one: the plainest way to count, one word at a time.
    fn count_one_by_one(hay: &str, needle: &str) -> usize {
        let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
        (0..hay.len())
            .filter(|&i| hay.is_char_boundary(i) && hay[i..].starts_with(needle))
            .filter(|&i| {
                boundary(hay[..i].chars().next_back())
                    && boundary(hay[i + needle.len()..].chars().next())
            })
            .count()
    }

    #[test]
    fn counts_whole_words_only() {
        assert_eq!(hits("spam, spammy spam!", &["spam"], false), (2, vec![0]));
        assert_eq!(hits("free money now", &["free money"], false), (1, vec![0]));
        assert_eq!(hits("nothing here", &["spam"], false), (0, vec![]));
        assert_eq!(hits("a spam", &["", "ham", "spam"], false), (1, vec![2]));
        // Overlapping occurrences all count.
        assert_eq!(hits("ab ab ab", &["ab ab"], false), (2, vec![0]));
    }

    #[test]
    fn a_word_listed_twice_counts_its_hits_once() {
        assert_eq!(
            hits("SPAM and spam", &["Spam", "spam", "eggs"], false),
            (2, vec![0, 1])
        );
        assert_eq!(
            hits("SPAM and spam", &["Spam", "spam", "SPAM"], true),
            (2, vec![1, 2])
        );
        // Lower case, not full case folding: "STRASSE" is "strasse".
        assert_eq!(hits("Straße", &["STRASSE", "straße"], false), (1, vec![1]));
    }

    /// Many words read together count what they count read one at a time, on texts
    /// made of few letters (so that words overlap, nest and share prefixes) with
    /// non-ASCII letters and separators.
    #[test]
    fn one_pass_counts_what_one_search_per_word_counts() {
        let alphabet = ['a', 'b', ' ', 'é', 'B', '-'];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let word = |next: &mut dyn FnMut(usize) -> usize, len: usize| -> String {
            (0..len).map(|_| alphabet[next(alphabet.len())]).collect()
        };
        for _ in 0..300 {
            let text = word(&mut next, 200);
            let count = 1 + next(12);
            let words: Vec<String> = (0..count)
                .map(|_| {
                    let len = 1 + next(4);
                    word(&mut next, len)
                })
                .collect();
            let case_sensitive = next(2) == 0;
            let m = Matcher::new(&words, case_sensitive).unwrap();
            let hay = m.fold(&text);
            let (got, found) = m.count(&hay);
            let mut want = 0;
            let mut want_found = Vec::new();
            let mut counted = std::collections::HashSet::new();
            for (i, w) in words.iter().enumerate() {
                let needle = fold(w, case_sensitive);
                if needle.is_empty() {
                    continue;
                }
                let n = count_one_by_one(&hay, &needle);
                if n > 0 {
                    want_found.push(i);
                }
                if counted.insert(needle) {
                    want += n;
                }
            }
            assert_eq!((got, found), (want, want_found), "{text:?} {words:?}");
        }
    }

    #[test]
    fn a_matcher_is_built_once_per_config_and_few_are_kept() {
        let keywords = Keywords::default();
        let config = |words: &[&str], case_sensitive| KeywordsConfig {
            words: words.iter().map(|w| w.to_string()).collect(),
            case_sensitive,
            ..KeywordsConfig::default()
        };
        let spam = keywords.matcher(&config(&["spam"], false)).unwrap();
        let again = keywords.matcher(&config(&["spam"], false)).unwrap();
        assert!(Arc::ptr_eq(&spam, &again));
        let sensitive = keywords.matcher(&config(&["spam"], true)).unwrap();
        assert!(!Arc::ptr_eq(&spam, &sensitive));
        let other = keywords.matcher(&config(&["spam", "eggs"], false)).unwrap();
        assert_eq!(other.source, ["spam", "eggs"]);
        for i in 0..2 * MATCHERS_KEPT {
            keywords
                .matcher(&config(&[&format!("w{i}")], false))
                .unwrap();
        }
        assert_eq!(keywords.matchers.lock().unwrap().len(), MATCHERS_KEPT);
        // The first ones were dropped: asking again builds a new one.
        let rebuilt = keywords.matcher(&config(&["spam"], false)).unwrap();
        assert!(!Arc::ptr_eq(&spam, &rebuilt));
    }
}
