//! `google.api.http` path templates: `/v1/chains/{chain}:moderate`, `{name=**}`.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    /// A variable bound to a (possibly dotted) field path; `rest` for `=**`.
    Var {
        field: String,
        rest: bool,
    },
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
    verb: Option<String>,
    source: String,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, String> {
        let path = source
            .strip_prefix('/')
            .ok_or_else(|| format!("template `{source}` must start with /"))?;
        // The verb is a `:name` after the last segment, outside braces.
        let (path, verb) = match path.rfind(':') {
            Some(i) if !path[i..].contains('}') && !path[i..].contains('/') => {
                (&path[..i], Some(path[i + 1..].to_owned()))
            }
            _ => (path, None),
        };
        let mut segments = Vec::new();
        for seg in path.split('/') {
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                segments.push(Segment::Var {
                    field: field.to_owned(),
                    rest: pattern == "**",
                });
            } else if seg.contains('{') || seg.contains('}') {
                return Err(format!("template `{source}`: unsupported segment `{seg}`"));
            } else {
                segments.push(Segment::Literal(seg.to_owned()));
            }
        }
        Ok(Template {
            segments,
            verb,
            source: source.to_owned(),
        })
    }

    /// The template as written, e.g. for OpenAPI paths.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Field paths bound by this template.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var { field, .. } => Some(field.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Matches a request path; returns (field path, percent-decoded value) pairs.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(v) => path.strip_suffix(v.as_str())?.strip_suffix(':')?,
            // A colon in the last segment starts a verb (`/v1/chains/x:rollback`), which
            // a template without one does not take as part of a variable.
            None if path
                .rsplit('/')
                .next()
                .is_some_and(|last| last.contains(':')) =>
            {
                return None;
            }
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        let mut out = Vec::new();
        let mut i = 0;
        for (n, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                    i += 1;
                }
                Segment::Var { field, rest: true } => {
                    let remaining = self.segments.len() - n - 1;
                    if parts.len() < i + 1 + remaining {
                        return None;
                    }
                    let end = parts.len() - remaining;
                    out.push((field.clone(), decode(&parts[i..end].join("/"))?));
                    i = end;
                }
                Segment::Var { field, rest: false } => {
                    let v = parts.get(i)?;
                    if v.is_empty() {
                        return None;
                    }
                    out.push((field.clone(), decode(v)?));
                    i += 1;
                }
            }
        }
        (i == parts.len()).then_some(out)
    }
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_variables_and_verbs() {
        let t = Template::parse("/v1/chains/{chain}:moderate").unwrap();
        assert_eq!(
            t.matches("/v1/chains/profile-photo:moderate"),
            Some(vec![("chain".into(), "profile-photo".into())])
        );
        assert_eq!(t.matches("/v1/chains/profile-photo"), None);
        assert_eq!(t.matches("/v1/chains/:moderate"), None);
        assert_eq!(t.matches("/v1/chains/a/b:moderate"), None);
    }

    #[test]
    fn matches_plain_and_rest_paths() {
        let t = Template::parse("/v1/chains/{name}").unwrap();
        assert_eq!(
            t.matches("/v1/chains/a%20b"),
            Some(vec![("name".into(), "a b".into())])
        );
        // Another method's verb, not a name with a colon in it (which is sent escaped).
        assert_eq!(t.matches("/v1/chains/a:rollback"), None);
        assert_eq!(
            t.matches("/v1/chains/a%3Ab"),
            Some(vec![("name".into(), "a:b".into())])
        );
        assert_eq!(t.matches("/v1/chains"), None);
        let t = Template::parse("/v1/files/{path=**}/meta").unwrap();
        assert_eq!(
            t.matches("/v1/files/a/b/c/meta"),
            Some(vec![("path".into(), "a/b/c".into())])
        );
        let t = Template::parse("/v1/chains:validate").unwrap();
        assert_eq!(t.matches("/v1/chains:validate"), Some(vec![]));
        assert_eq!(t.matches("/v1/chains"), None);
    }
}
