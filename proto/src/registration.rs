//! How a filter replica announces itself in etcd, written by the filter SDK and read by
//! the gateway's etcd discovery: one key per replica, `{prefix}/{filter}/{instance}`,
//! bound to a lease the replica keeps alive, whose value is a small JSON object.

use serde_json::{Map, Value};

/// The default key prefix.
pub const DEFAULT_ETCD_PREFIX: &str = "/sekisho/filters";

/// One replica's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub filter: String,
    /// Where the gateway reaches it, `http://host:port`.
    pub address: String,
}

/// The key of one replica, `{prefix}/{filter}/{instance}`.
pub fn etcd_key(prefix: &str, filter: &str, instance: &str) -> String {
    format!("{}/{filter}/{instance}", prefix.trim_end_matches('/'))
}

impl Registration {
    /// The value stored under the key.
    pub fn to_json(&self) -> String {
        serde_json::json!({"filter": self.filter, "address": self.address}).to_string()
    }

    /// Reads a key and its value, checking that they agree and the address is usable.
    /// The error says what is wrong, for a log line naming the key.
    pub fn parse(prefix: &str, key: &str, value: &[u8]) -> Result<Self, String> {
        let rest = key
            .strip_prefix(prefix.trim_end_matches('/'))
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| format!("the key is not under `{prefix}/`"))?;
        let (key_filter, instance) = rest
            .split_once('/')
            .ok_or("the key is not `{prefix}/{filter}/{instance}`")?;
        if key_filter.is_empty() || instance.is_empty() || instance.contains('/') {
            return Err("the key is not `{prefix}/{filter}/{instance}`".into());
        }
        let v: Value =
            serde_json::from_slice(value).map_err(|e| format!("the value is not JSON: {e}"))?;
        let obj: &Map<String, Value> = v.as_object().ok_or("the value is not a JSON object")?;
        let field = |name: &str| -> Result<String, String> {
            obj.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("the value has no string `{name}`"))
        };
        let filter = field("filter")?;
        let address = field("address")?;
        if filter != key_filter {
            return Err(format!(
                "the value says filter `{filter}` but the key says `{key_filter}`"
            ));
        }
        check_address(&address)?;
        Ok(Registration { filter, address })
    }
}

/// An endpoint address the gateway can dial: `http://host:port` or `https://host:port`.
pub fn check_address(address: &str) -> Result<(), String> {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .ok_or_else(|| format!("address `{address}` must start with http:// or https://"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains(char::is_whitespace) {
        return Err(format!("address `{address}` is not `http://host:port`"));
    }
    address
        .parse::<http::Uri>()
        .map_err(|e| format!("address `{address}`: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back() {
        let r = Registration {
            filter: "noop".into(),
            address: "http://10.0.0.5:50061".into(),
        };
        let key = etcd_key("/sekisho/filters/", "noop", "a1");
        assert_eq!(key, "/sekisho/filters/noop/a1");
        assert_eq!(
            Registration::parse("/sekisho/filters", &key, r.to_json().as_bytes()).unwrap(),
            r
        );
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        let p = "/sekisho/filters";
        let ok = br#"{"filter":"noop","address":"http://h:1"}"#;
        let cases: [(&str, &[u8], &str); 6] = [
            ("/other/noop/a", ok, "not under"),
            ("/sekisho/filters/noop", ok, "is not `{prefix}"),
            ("/sekisho/filters/noop/a", b"{", "not JSON"),
            (
                "/sekisho/filters/noop/a",
                br#"{"filter":"noop"}"#,
                "no string `address`",
            ),
            ("/sekisho/filters/kw/a", ok, "but the key says `kw`"),
            (
                "/sekisho/filters/noop/a",
                br#"{"filter":"noop","address":"h:1"}"#,
                "must start with http://",
            ),
        ];
        for (key, value, want) in cases {
            let e = Registration::parse(p, key, value).unwrap_err();
            assert!(e.contains(want), "{key}: {e}");
        }
    }
}
