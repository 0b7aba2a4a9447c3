//! `/openapi.json`: an OpenAPI 3.0 document generated from the same routes and
//! descriptors the proxy serves, so it cannot drift from what is served. Field and
//! message descriptions come from the comments in `proto/`.
//!
//! What a request must hold comes from `google.api.field_behavior = REQUIRED` (the
//! services refuse a request without it, over gRPC and JSON alike): such a field is
//! listed in its message's `required`, a string must not be empty and a number not 0
//! (proto3 cannot tell those from unset); when every member of a oneof is marked, one
//! of them must be set, and not to an empty value. A request body is required when its
//! message has a required field; messages admit no properties but their fields (the
//! proxy refuses unknown names). With `body: "*"`, a body's schema is its message less
//! the fields the path sets. 64-bit integers are strings of at most 18 (signed) or 19
//! digits, so that every number the documents admit is in range.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::routes::{Route, field_path, is_required};

/// The OpenAPI document for `routes`.
pub fn openapi(routes: &[Route], title: &str, version: &str) -> Value {
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut todo: Vec<MessageDescriptor> = Vec::new();
    for r in routes {
        let input = r.input();
        let path_fields: BTreeSet<&str> = r.template.fields().collect();
        let mut params: Vec<Value> = path_fields
            .iter()
            .map(|f| {
                let mut schema = field_path(&input, f)
                    .map(|fd| scalar_schema(&fd.kind()))
                    .unwrap_or_else(|| json!({"type": "string"}));
                // A path segment is never empty.
                if schema["type"] == "string" && schema.get("pattern").is_none() {
                    schema["minLength"] = json!(1);
                }
                json!({"name": f, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if r.body.is_empty() {
            for f in input.fields() {
                if path_fields.contains(f.name()) || matches!(f.kind(), Kind::Message(_)) {
                    continue;
                }
                let required = is_required(&f);
                let schema = if required {
                    non_default(field_schema(&f))
                } else {
                    field_schema(&f)
                };
                params.push(
                    json!({"name": f.name(), "in": "query", "required": required,
                    "schema": schema, "description": comments(&f).unwrap_or_default()}),
                );
            }
        }
        let mut op = json!({
            "operationId": format!("{}_{}", r.method.parent_service().name(), r.method.name()),
            "tags": [r.method.parent_service().name()],
            "summary": method_comments(r).unwrap_or_default(),
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": reference(&r.output())}}},
                "default": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if !r.body.is_empty() {
            let body_msg = if r.body == "*" {
                input.clone()
            } else {
                match input.get_field_by_name(&r.body).map(|f| f.kind()) {
                    Some(Kind::Message(m)) => m,
                    _ => input.clone(),
                }
            };
            // With `body: "*"`, the fields the path sets are not the body's: the proxy
            // refuses a body that sets one to another value.
            let skip: BTreeSet<&str> = if r.body == "*" {
                path_fields
                    .iter()
                    .copied()
                    .filter(|f| body_msg.get_field_by_name(f).is_some())
                    .collect()
            } else {
                BTreeSet::new()
            };
            let required = body_msg
                .fields()
                .any(|f| is_required(&f) && !skip.contains(f.name()));
            let schema = if skip.is_empty() {
                todo.push(body_msg.clone());
                reference(&body_msg)
            } else {
                message_schema(&body_msg, &skip, true, &mut todo)
            };
            op["requestBody"] = json!({"required": required,
                "content": {"application/json": {"schema": schema}}});
        }
        todo.push(r.output());
        paths
            .entry(r.template.source().to_owned())
            .or_default()
            .insert(r.http_method.as_str().to_ascii_lowercase(), op);
    }

    let mut schemas = serde_json::Map::new();
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "properties": {"error": {"type": "object", "properties": {
            "code": {"type": "integer", "description": "The HTTP status."},
            "status": {"type": "string", "description": "The gRPC code name, e.g. INVALID_ARGUMENT."},
            "message": {"type": "string"}}}}}),
    );
    // proto3 JSON reads null as a field's default: a request may send it for any field it
    // may leave out. Only messages that requests alone carry say so, so that responses
    // (which never hold null) keep their strict types.
    let requests = reachable(routes.iter().map(Route::input));
    let responses = reachable(routes.iter().map(Route::output));
    let mut done = BTreeSet::new();
    while let Some(m) = todo.pop() {
        if !done.insert(m.full_name().to_owned()) || well_known(&m).is_some() {
            continue;
        }
        let nullable = requests.contains(m.full_name()) && !responses.contains(m.full_name());
        let schema = message_schema(&m, &BTreeSet::new(), nullable, &mut todo);
        schemas.insert(m.full_name().to_owned(), schema);
    }

    json!({
        "openapi": "3.0.3",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {"schemas": schemas}
    })
}

/// The schema of message `m` without the fields named in `skip` (those a request's path
/// sets); the messages its fields hold are pushed to `todo`, to be described once each.
fn message_schema(
    m: &MessageDescriptor,
    skip: &BTreeSet<&str>,
    nullable: bool,
    todo: &mut Vec<MessageDescriptor>,
) -> Value {
    let fields: Vec<FieldDescriptor> = m.fields().filter(|f| !skip.contains(f.name())).collect();
    let mut props = serde_json::Map::new();
    for f in &fields {
        todo.extend(held_message(f));
        let mut s = field_schema(f);
        // A required oneof member is required when it is the one chosen.
        if is_required(f) {
            s = non_default(s);
        } else if nullable {
            s = or_null(s);
        }
        if let Some(c) = comments(f) {
            s["description"] = Value::String(c);
        }
        props.insert(f.json_name().to_owned(), s);
    }
    let mut schema = json!({"type": "object", "properties": props,
        "additionalProperties": false});
    let required: Vec<String> = fields
        .iter()
        .filter(|f| is_required(f) && f.containing_oneof().is_none())
        .map(|f| f.json_name().to_owned())
        .collect();
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    let one_of: Vec<Value> = m
        .oneofs()
        .filter(|o| !o.is_synthetic() && o.fields().all(|f| is_required(&f)))
        .map(|o| {
            let members: Vec<Value> = o
                .fields()
                .map(|f| json!({"required": [f.json_name()]}))
                .collect();
            json!({"oneOf": members})
        })
        .collect();
    match one_of.len() {
        0 => {}
        1 => schema["oneOf"] = one_of[0]["oneOf"].clone(),
        _ => schema["allOf"] = json!(one_of),
    }
    if let Some(c) = message_comments(m) {
        schema["description"] = Value::String(c);
    }
    schema
}

/// The full names of the messages `from` holds, at any depth, `from` included.
fn reachable(from: impl Iterator<Item = MessageDescriptor>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<MessageDescriptor> = from.collect();
    while let Some(m) = todo.pop() {
        if !seen.insert(m.full_name().to_owned()) {
            continue;
        }
        todo.extend(m.fields().filter_map(|f| held_message(&f)));
    }
    seen
}

/// The message a field holds: its type, or a map's value type.
fn held_message(f: &FieldDescriptor) -> Option<MessageDescriptor> {
    let Kind::Message(inner) = f.kind() else {
        return None;
    };
    if !f.is_map() {
        return Some(inner);
    }
    match inner.map_entry_value_field().kind() {
        Kind::Message(v) => Some(v),
        _ => None,
    }
}

/// `s`, or null (OpenAPI 3.0 has no `type: null`; a `$ref` takes no siblings, so it is
/// wrapped).
fn or_null(s: Value) -> Value {
    if s.get("$ref").is_some() {
        json!({"allOf": [s], "nullable": true})
    } else {
        let mut s = s;
        s["nullable"] = json!(true);
        s
    }
}

/// A required scalar's schema narrowed to what is not its default: proto3 has no "unset"
/// for scalars, so an empty string or a 0 is the field left out.
fn non_default(mut s: Value) -> Value {
    match s["type"].as_str() {
        Some("string") if s["format"] == "uint64" => s["pattern"] = json!(NON_ZERO_UINT64),
        Some("string") if s["format"] == "int64" => s["pattern"] = json!(NON_ZERO_INT64),
        Some("string") => s["minLength"] = json!(1),
        Some("integer") | Some("number") => s["not"] = json!({"enum": [0]}),
        _ => {}
    }
    s
}

fn reference(m: &MessageDescriptor) -> Value {
    well_known(m)
        .unwrap_or_else(|| json!({"$ref": format!("#/components/schemas/{}", m.full_name())}))
}

fn well_known(m: &MessageDescriptor) -> Option<Value> {
    Some(match m.full_name() {
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": {}}),
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string", "example": "1.5s"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        _ => return None,
    })
}

fn field_schema(f: &FieldDescriptor) -> Value {
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return json!({"type": "object"});
        };
        return json!({"type": "object",
            "additionalProperties": kind_schema(&entry.map_entry_value_field().kind())});
    }
    let s = kind_schema(&f.kind());
    if f.is_list() {
        json!({"type": "array", "items": s})
    } else {
        s
    }
}

fn kind_schema(k: &Kind) -> Value {
    match k {
        Kind::Message(m) => reference(m),
        other => scalar_schema(other),
    }
}

/// 64-bit integers as strings, in patterns that admit only numbers in range: up to 18
/// digits for a signed one and 19 for an unsigned one (leading zeros aside). Longer ones
/// in range are accepted too, but a pattern cannot say where the range ends.
const INT64: &str = "^-?0*[0-9]{1,18}$";
const UINT64: &str = "^0*[0-9]{1,19}$";
const NON_ZERO_INT64: &str = "^-?0*[1-9][0-9]{0,17}$";
const NON_ZERO_UINT64: &str = "^0*[1-9][0-9]{0,18}$";

/// Scalars in the proto3 JSON mapping: 64-bit integers are strings, bytes are base64.
fn scalar_schema(k: &Kind) -> Value {
    match k {
        Kind::Double => json!({"type": "number"}),
        // A float beyond f32's range is refused, not turned into infinity.
        Kind::Float => json!({"type": "number", "minimum": f32::MIN, "maximum": f32::MAX}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX})
        }
        Kind::Uint32 | Kind::Fixed32 => {
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            json!({"type": "string", "format": "int64", "pattern": INT64})
        }
        Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "uint64", "pattern": UINT64})
        }
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => reference(m),
    }
}

fn location_comments(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let loc = info.location.iter().find(|l| l.path == path)?;
    let text = loc.leading_comments.as_deref()?.trim();
    (!text.is_empty()).then(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn comments(f: &FieldDescriptor) -> Option<String> {
    location_comments(&f.parent_file(), f.path())
}

fn message_comments(m: &MessageDescriptor) -> Option<String> {
    location_comments(&m.parent_file(), m.path())
}

fn method_comments(r: &Route) -> Option<String> {
    location_comments(&r.method.parent_file(), r.method.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the 64-bit patterns admit fits: their longest numbers parse.
    #[test]
    fn the_64_bit_patterns_admit_only_numbers_in_range() {
        assert!(UINT64.ends_with("{1,19}$") && NON_ZERO_UINT64.ends_with("{0,18}$"));
        assert!(INT64.ends_with("{1,18}$") && NON_ZERO_INT64.ends_with("{0,17}$"));
        assert!("9".repeat(19).parse::<u64>().is_ok());
        assert!(format!("-{}", "9".repeat(18)).parse::<i64>().is_ok());
        assert!(format!("{}7", "0".repeat(40)).parse::<u64>().is_ok());
        assert!("9".repeat(20).parse::<u64>().is_err());
    }
}
