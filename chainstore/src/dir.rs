//! Loading chains from a directory of YAML/JSON files: the gateway's chain source until
//! it follows the chainstore. A bad file is reported with its path and line, and the
//! others still load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{ChainSpec, Limits, Problem, parse_chain, validate};

/// A chain read from a file, valid by [`validate`].
#[derive(Debug, Clone)]
pub struct LoadedChain {
    pub spec: ChainSpec,
    pub source: PathBuf,
}

/// A file that did not load, and why.
#[derive(Debug, Clone)]
pub struct FileProblem {
    pub source: PathBuf,
    pub problem: Problem,
}

/// Loads every `*.yaml`, `*.yml` and `*.json` file of `dir`. Returns the valid chains and
/// a problem for each file (or chain) that was refused.
pub fn load_dir(
    dir: &Path,
    limits: &Limits,
) -> std::io::Result<(Vec<LoadedChain>, Vec<FileProblem>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    let mut chains: Vec<LoadedChain> = Vec::new();
    let mut problems = Vec::new();
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(file_problem(&path, "", format!("cannot read: {e}")));
                continue;
            }
        };
        let spec = match parse_chain(&text) {
            Ok(s) => s,
            Err(e) => {
                let at = match (e.line, e.column) {
                    (Some(l), Some(c)) => format!("line {l} column {c}"),
                    _ => String::new(),
                };
                problems.push(file_problem(&path, &at, e.message));
                continue;
            }
        };
        let found = validate(&spec, limits);
        if !found.is_empty() {
            problems.extend(found.into_iter().map(|p| FileProblem {
                source: path.clone(),
                problem: p,
            }));
            continue;
        }
        if let Some(first) = by_name.get(&spec.name) {
            problems.push(file_problem(
                &path,
                "name",
                format!(
                    "chain `{}` is already defined in {}",
                    spec.name,
                    first.display()
                ),
            ));
            continue;
        }
        by_name.insert(spec.name.clone(), path.clone());
        chains.push(LoadedChain { spec, source: path });
    }
    Ok((chains, problems))
}

fn file_problem(path: &Path, at: &str, message: String) -> FileProblem {
    FileProblem {
        source: path.to_owned(),
        problem: Problem {
            path: at.to_owned(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_files_load_and_bad_ones_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "name: a\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: kw}]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "name: b\ncontent_types: [text/plain]\nstages: [\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.yaml"),
            "name: a\ncontent_types: [text/plain]\nstages:\n  - id: s\n    filters: [{use: kw}]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (chains, problems) = load_dir(dir.path(), &Limits::default()).unwrap();
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].spec.name, "a");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].source.ends_with("b.yaml"));
        assert!(
            problems[0].problem.path.starts_with("line "),
            "{:?}",
            problems[0]
        );
        assert!(problems[1].problem.message.contains("already defined"));
    }
}
