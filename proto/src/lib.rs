//! Sekisho's contracts, generated from `proto/` at build time, and the encoded descriptor
//! set that server reflection, the JSON proxy and `/openapi.json` are built from.
//!
//! Nothing here is written by hand but the few helpers at the bottom; generated code is
//! never committed.

pub mod filter {
    pub mod v1 {
        tonic::include_proto!("sekisho.filter.v1");
    }
}

pub mod gateway {
    pub mod v1 {
        tonic::include_proto!("sekisho.gateway.v1");
    }
}

pub mod chainstore {
    pub mod v1 {
        tonic::include_proto!("sekisho.chainstore.v1");
    }
}

pub mod aggregator {
    pub mod v1 {
        tonic::include_proto!("sekisho.aggregator.v1");
    }
}

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

pub mod codec;
pub mod registration;
mod structs;
pub use structs::{json_to_struct, merge_config, struct_to_json};

/// Every Sekisho proto file, with its imports, as an encoded `FileDescriptorSet`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sekisho_descriptor");

/// The descriptor pool decoded from [`FILE_DESCRIPTOR_SET`], built once.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("the descriptor set built by build.rs decodes")
    })
}

/// Whether `content_type` (e.g. `image/png; q=1`) is matched by `pattern`
/// (`image/png`, `image/*` or `*/*`). Parameters are ignored; case does not matter.
pub fn content_type_matches(pattern: &str, content_type: &str) -> bool {
    let essence = |s: &str| {
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let (p, c) = (essence(pattern), essence(content_type));
    if p == "*/*" || p == c {
        return true;
    }
    match (p.split_once('/'), c.split_once('/')) {
        (Some((pt, "*")), Some((ct, _))) => pt == ct,
        _ => false,
    }
}

/// The execution provider a filter's descriptor reports in its `info`
/// (`execution_provider`: `cuda:0`, `cpu`), or `none` for a filter that runs no model.
pub fn execution_provider(d: &filter::v1::FilterDescriptor) -> String {
    d.info
        .get("execution_provider")
        .cloned()
        .unwrap_or_else(|| "none".into())
}

/// The caller's deadline from its `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`),
/// or None when it gave none or a malformed one.
pub fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Instant> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(v).map(|d| std::time::Instant::now() + d)
}

fn parse_grpc_timeout(v: &str) -> Option<std::time::Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The metadata key of gRPC's server retry pushback (gRPC proposal A6): milliseconds
/// until a retry may succeed. A status that carries it reaches HTTP as `Retry-After`.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// `status` with a retry pushback of `after` (at least 1 ms).
pub fn with_retry_pushback(mut status: tonic::Status, after: std::time::Duration) -> tonic::Status {
    let ms = after.as_millis().clamp(1, u64::MAX as u128).to_string();
    if let Ok(v) = ms.parse() {
        status.metadata_mut().insert(RETRY_PUSHBACK, v);
    }
    status
}

/// The retry pushback a status carries, if any (a malformed or negative one: none).
pub fn retry_pushback(status: &tonic::Status) -> Option<std::time::Duration> {
    let v = status.metadata().get(RETRY_PUSHBACK)?.to_str().ok()?;
    v.parse().ok().map(std::time::Duration::from_millis)
}

/// A gRPC code as a metric label: the spec's name in lower case (`invalid_argument`).
pub fn code_label(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pushback goes on a status in whole milliseconds (at least one) and reads back;
    /// a malformed or negative one (gRPC's "do not retry") reads as none.
    #[test]
    fn retry_pushbacks_round_trip_and_malformed_ones_are_ignored() {
        use std::time::Duration;
        let s = |d| with_retry_pushback(tonic::Status::resource_exhausted("busy"), d);
        assert_eq!(
            retry_pushback(&s(Duration::from_micros(41_700))),
            Some(Duration::from_millis(41))
        );
        assert_eq!(
            retry_pushback(&s(Duration::ZERO)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            retry_pushback(&tonic::Status::resource_exhausted("x")),
            None
        );
        for bad in ["-1", "soon", ""] {
            let mut st = tonic::Status::resource_exhausted("x");
            st.metadata_mut()
                .insert(RETRY_PUSHBACK, bad.parse().unwrap());
            assert_eq!(retry_pushback(&st), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_timeouts_read_in_every_unit_and_malformed_ones_are_ignored() {
        use std::time::Duration;
        let d = |v: &str| parse_grpc_timeout(v);
        assert_eq!(d("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(d("2M"), Some(Duration::from_secs(120)));
        assert_eq!(d("3S"), Some(Duration::from_secs(3)));
        assert_eq!(d("250m"), Some(Duration::from_millis(250)));
        assert_eq!(d("7u"), Some(Duration::from_micros(7)));
        assert_eq!(d("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "123456789m", "-1m", "1x", "1.5S"] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types_match_with_wildcards_and_parameters() {
        assert!(content_type_matches("image/*", "image/png"));
        assert!(content_type_matches("*/*", "text/plain"));
        assert!(content_type_matches(
            "text/plain",
            "Text/Plain; charset=utf-8"
        ));
        assert!(!content_type_matches("image/*", "text/plain"));
        assert!(!content_type_matches("image/png", "image/jpeg"));
    }

    #[test]
    fn the_descriptor_pool_knows_every_service_and_its_http_rules() {
        let pool = descriptor_pool();
        for s in [
            "sekisho.filter.v1.Filter",
            "sekisho.gateway.v1.Gateway",
            "sekisho.chainstore.v1.ChainStore",
            "sekisho.aggregator.v1.Aggregator",
        ] {
            assert!(pool.get_service_by_name(s).is_some(), "{s}");
        }
        let http = pool.get_extension_by_name("google.api.http").unwrap();
        let moderate = pool
            .get_service_by_name("sekisho.gateway.v1.Gateway")
            .unwrap()
            .methods()
            .find(|m| m.name() == "Moderate")
            .unwrap();
        let rule = moderate.options().get_extension(&http).into_owned();
        let rule = rule.as_message().unwrap();
        assert_eq!(
            rule.get_field_by_name("post").unwrap().as_str(),
            Some("/v1/chains/{chain}:moderate")
        );
    }
}
