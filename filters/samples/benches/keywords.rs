//! `cargo bench -p sekisho-filters-samples --bench keywords`: the keywords filter's
//! `apply` (one Aho-Corasick pass over the text) next to one search per word (the code
//! before it, kept here as the baseline), on a comment-sized text and on 1 MiB, with a
//! short and a long word list.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sekisho_filter_sdk::{Filter, Input, Payload};
use sekisho_filters_samples::{Keywords, KeywordsConfig};

/// One search per word: what `keywords` did before it read the text once.
fn one_search_per_word(text: &str, words: &[String]) -> usize {
    let hay = text.to_lowercase();
    let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    words
        .iter()
        .map(|w| w.to_lowercase())
        .filter(|w| !w.is_empty())
        .map(|needle| {
            hay.match_indices(&needle)
                .filter(|(i, m)| {
                    boundary(hay[..*i].chars().next_back())
                        && boundary(hay[i + m.len()..].chars().next())
                })
                .count()
        })
        .sum()
}

fn words(n: usize) -> Vec<String> {
    // Word-like, sharing prefixes with the text's words, as a real list does.
    (0..n).map(|i| format!("lor{i}em")).collect()
}

fn text(bytes: usize) -> String {
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit lor7em. ";
    line.repeat(bytes.div_ceil(line.len()))[..bytes].to_owned()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("keywords");
    group.sample_size(10);
    for (n_words, n_bytes) in [(20, 200), (2000, 200), (20, 1 << 20), (2000, 1 << 20)] {
        let words = words(n_words);
        let text = text(n_bytes);
        let id = format!("{n_words} words, {n_bytes} bytes");
        let config = KeywordsConfig {
            words: words.clone(),
            score_per_hit: 0.1,
            ..KeywordsConfig::default()
        };
        let input = Input {
            content_type: "text/plain".into(),
            payload: Payload::Text(text.clone()),
            context: Default::default(),
        };
        // Both count the same hits, or the comparison means nothing.
        let verdict = rt
            .block_on(Keywords::default().apply(input.clone(), config.clone()))
            .unwrap();
        assert_eq!(
            verdict.labels["hits"] as usize,
            one_search_per_word(&text, &words)
        );
        // As a filter process runs it: one `Keywords`, the same config call after call
        // (its matcher built once and kept), and each call given its own copy of the
        // input and config, as the server hands them over; the baseline copies them too.
        let keywords = Keywords::default();
        group.bench_function(BenchmarkId::new("one pass (apply)", &id), |b| {
            b.iter(|| {
                rt.block_on(keywords.apply(input.clone(), config.clone()))
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("one search per word", &id), |b| {
            b.iter(|| {
                let (input, config) = (input.clone(), config.clone());
                one_search_per_word(input.text().unwrap(), &config.words)
            })
        });
        // A config seen for the first time: the matcher is built for this call.
        group.bench_function(BenchmarkId::new("one pass, a new config", &id), |b| {
            b.iter(|| {
                rt.block_on(Keywords::default().apply(input.clone(), config.clone()))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
