//! Conversions between `google.protobuf.Struct` (how config and details travel) and
//! `serde_json::Value` (how Rust code reads them).

use prost_types::{ListValue, Struct, Value, value::Kind};

/// Turns a protobuf `Struct` into a JSON object.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        // Struct carries every number as a double; whole numbers come back as integers
        // so that typed configs (`delay_ms: u64`) read them.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            serde_json::Value::from(*n as i64)
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

/// Turns a JSON value into a protobuf `Struct`; anything but an object gives `None`.
pub fn json_to_struct(v: &serde_json::Value) -> Option<Struct> {
    match v {
        serde_json::Value::Object(map) => Some(Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }),
        _ => None,
    }
}

fn json_to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v).unwrap_or_default()),
    };
    Value { kind: Some(kind) }
}

/// Merges a chain's config override into a filter's defaults, as every filter does before
/// a call: objects key by key, anything else replaced.
pub fn merge_config(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_config(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_struct() {
        let json = serde_json::json!({
            "min_score": 0.5,
            "delay_ms": 5000,
            "offset": -3,
            "nms": {"method": "gaussian", "sigma": 0.5},
            "words": ["a", "b"],
            "strict": true,
            "none": null
        });
        let s = json_to_struct(&json).unwrap();
        assert_eq!(struct_to_json(&s), json);
    }

    #[test]
    fn only_objects_become_structs() {
        assert!(json_to_struct(&serde_json::json!([1, 2])).is_none());
    }
}
