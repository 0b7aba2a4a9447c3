//! Rewrites the declared shapes of a model's graph inputs and outputs, as
//! `onnx.tools.update_model_dims` does: CenterFace ships with fixed dims
//! ([10, 3, 32, 32]) that ONNX Runtime enforces, so they are made symbolic before the
//! session is built.
//!
//! The edit works on the protobuf wire format and copies every other byte unchanged:
//! only the messages on the path ModelProto.graph → GraphProto.input/output →
//! ValueInfoProto.type → TypeProto.tensor_type → shape are re-encoded.

use std::collections::HashMap;

use prost::encoding::{decode_varint, encode_varint};

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(i64),
    Symbolic(String),
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Symbolic(name.to_owned())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the model is not a valid ONNX protobuf: {0}")]
pub struct DimsError(String);

// Field numbers from onnx.proto.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INITIALIZER: u64 = 5;
const GRAPH_INPUT: u64 = 11;
const TENSOR_NAME: u64 = 8;
const GRAPH_OUTPUT: u64 = 12;
const VALUE_INFO_NAME: u64 = 1;
const VALUE_INFO_TYPE: u64 = 2;
const TYPE_TENSOR: u64 = 1;
const TENSOR_SHAPE: u64 = 2;
const SHAPE_DIM: u64 = 1;
const DIM_VALUE: u64 = 1;
const DIM_PARAM: u64 = 2;

const LEN: u8 = 2;

/// One field of a message: its number, wire type, the whole encoded field, and the
/// payload of a length-delimited field.
struct Field<'a> {
    number: u64,
    wire: u8,
    raw: &'a [u8],
    payload: &'a [u8],
}

fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<Field<'_>, DimsError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let start = buf;
        let result = (|| {
            let key = decode_varint(&mut buf).map_err(|e| DimsError(e.to_string()))?;
            let (number, wire) = (key >> 3, (key & 7) as u8);
            let payload: &[u8] = match wire {
                0 => {
                    decode_varint(&mut buf).map_err(|e| DimsError(e.to_string()))?;
                    &[]
                }
                1 | 5 => {
                    let n = if wire == 1 { 8 } else { 4 };
                    if buf.len() < n {
                        return Err(DimsError("truncated fixed-width field".into()));
                    }
                    buf = &buf[n..];
                    &[]
                }
                LEN => {
                    let n = decode_varint(&mut buf).map_err(|e| DimsError(e.to_string()))? as usize;
                    if buf.len() < n {
                        return Err(DimsError("truncated length-delimited field".into()));
                    }
                    let (p, rest) = buf.split_at(n);
                    buf = rest;
                    p
                }
                w => return Err(DimsError(format!("unsupported wire type {w}"))),
            };
            let used = start.len() - buf.len();
            Ok(Field {
                number,
                wire,
                raw: &start[..used],
                payload,
            })
        })();
        if result.is_err() {
            buf = &[];
        }
        Some(result)
    })
}

fn put_len(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    encode_varint((number << 3) | LEN as u64, out);
    encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Copies `msg`, passing each length-delimited field numbered `number` through `edit`.
fn rewrite(
    msg: &[u8],
    number: u64,
    mut edit: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, DimsError>,
) -> Result<Vec<u8>, DimsError> {
    let mut out = Vec::with_capacity(msg.len());
    for f in fields(msg) {
        let f = f?;
        if f.number == number && f.wire == LEN {
            match edit(f.payload)? {
                Some(new) => put_len(&mut out, number, &new),
                None => out.extend_from_slice(f.raw),
            }
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

fn shape(dims: &[Dim]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            Dim::Fixed(v) => {
                encode_varint(DIM_VALUE << 3, &mut dim);
                encode_varint(*v as u64, &mut dim);
            }
            Dim::Symbolic(s) => put_len(&mut dim, DIM_PARAM, s.as_bytes()),
        }
        put_len(&mut out, SHAPE_DIM, &dim);
    }
    out
}

fn value_info_name(vi: &[u8]) -> Result<Option<String>, DimsError> {
    for f in fields(vi) {
        let f = f?;
        if f.number == VALUE_INFO_NAME && f.wire == LEN {
            return Ok(Some(String::from_utf8_lossy(f.payload).into_owned()));
        }
    }
    Ok(None)
}

/// Gives the named graph inputs and outputs the shapes in `dims`; every name must be
/// found.
pub fn set_io_dims(model: &[u8], dims: &HashMap<&str, Vec<Dim>>) -> Result<Vec<u8>, DimsError> {
    let mut found = 0;
    let out = rewrite(model, MODEL_GRAPH, |graph| {
        let edit_vi = |vi: &[u8], found: &mut usize| -> Result<Option<Vec<u8>>, DimsError> {
            let Some(name) = value_info_name(vi)? else {
                return Ok(None);
            };
            let Some(new) = dims.get(name.as_str()) else {
                return Ok(None);
            };
            *found += 1;
            let vi = rewrite(vi, VALUE_INFO_TYPE, |ty| {
                rewrite(ty, TYPE_TENSOR, |tensor| {
                    // Drop the old shape, append the new one.
                    let mut t = Vec::with_capacity(tensor.len());
                    for f in fields(tensor) {
                        let f = f?;
                        if f.number != TENSOR_SHAPE {
                            t.extend_from_slice(f.raw);
                        }
                    }
                    put_len(&mut t, TENSOR_SHAPE, &shape(new));
                    Ok(Some(t))
                })
                .map(Some)
            })?;
            Ok(Some(vi))
        };
        let g = rewrite(graph, GRAPH_INPUT, |vi| edit_vi(vi, &mut found))?;
        let g = rewrite(&g, GRAPH_OUTPUT, |vi| edit_vi(vi, &mut found))?;
        Ok(Some(g))
    })?;
    if found != dims.len() {
        return Err(DimsError(format!(
            "found {found} of the {} inputs and outputs named",
            dims.len()
        )));
    }
    Ok(out)
}

/// Removes graph inputs that only restate an initializer, as ONNX Runtime's
/// `remove_initializer_from_input.py` does. Older exporters list every weight as an
/// input too; ONNX Runtime must then treat the weights as overridable, which stops it
/// from folding constants and fusing batch norms into convolutions. Returns the model
/// and how many inputs went.
pub fn drop_initializer_inputs(model: &[u8]) -> Result<(Vec<u8>, usize), DimsError> {
    let mut dropped = 0;
    let out = rewrite(model, MODEL_GRAPH, |graph| {
        let mut weights = std::collections::HashSet::new();
        for f in fields(graph) {
            let f = f?;
            if f.number == GRAPH_INITIALIZER && f.wire == LEN {
                for t in fields(f.payload) {
                    let t = t?;
                    if t.number == TENSOR_NAME && t.wire == LEN {
                        weights.insert(t.payload.to_vec());
                    }
                }
            }
        }
        let mut g = Vec::with_capacity(graph.len());
        for f in fields(graph) {
            let f = f?;
            if f.number == GRAPH_INPUT
                && f.wire == LEN
                && let Some(name) = value_info_name(f.payload)?
                && weights.contains(name.as_bytes())
            {
                dropped += 1;
                continue;
            }
            g.extend_from_slice(f.raw);
        }
        Ok(Some(g))
    })?;
    Ok((out, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built ModelProto: graph { input { name: "x" type { tensor_type {
    /// elem_type: 1 shape { dim { dim_value: 10 } dim { dim_value: 3 } } } } } }, with an
    /// unrelated field before and after the graph.
    fn model() -> Vec<u8> {
        let dims = shape(&[Dim::Fixed(10), Dim::Fixed(3)]);
        let mut tensor = vec![0x08, 0x01]; // elem_type = 1
        put_len(&mut tensor, TENSOR_SHAPE, &dims);
        let mut ty = Vec::new();
        put_len(&mut ty, TYPE_TENSOR, &tensor);
        let mut vi = Vec::new();
        put_len(&mut vi, VALUE_INFO_NAME, b"x");
        put_len(&mut vi, VALUE_INFO_TYPE, &ty);
        let mut graph = Vec::new();
        put_len(&mut graph, GRAPH_INPUT, &vi);
        let mut m = vec![0x08, 0x07]; // ir_version = 7
        put_len(&mut m, MODEL_GRAPH, &graph);
        put_len(&mut m, 14, b"keep me");
        m
    }

    #[test]
    fn dims_are_replaced_and_the_rest_kept() {
        let dims = HashMap::from([("x", vec![Dim::sym("B"), Dim::Fixed(3)])]);
        let out = set_io_dims(&model(), &dims).unwrap();
        let expected = {
            let mut tensor = vec![0x08, 0x01];
            put_len(
                &mut tensor,
                TENSOR_SHAPE,
                &shape(&[Dim::sym("B"), Dim::Fixed(3)]),
            );
            let mut ty = Vec::new();
            put_len(&mut ty, TYPE_TENSOR, &tensor);
            let mut vi = Vec::new();
            put_len(&mut vi, VALUE_INFO_NAME, b"x");
            put_len(&mut vi, VALUE_INFO_TYPE, &ty);
            let mut graph = Vec::new();
            put_len(&mut graph, GRAPH_INPUT, &vi);
            let mut m = vec![0x08, 0x07];
            put_len(&mut m, MODEL_GRAPH, &graph);
            put_len(&mut m, 14, b"keep me");
            m
        };
        assert_eq!(out, expected);
    }

    #[test]
    fn inputs_that_restate_initializers_are_dropped() {
        let mut weight = Vec::new();
        put_len(&mut weight, TENSOR_NAME, b"w");
        let mut vi_w = Vec::new();
        put_len(&mut vi_w, VALUE_INFO_NAME, b"w");
        let mut vi_x = Vec::new();
        put_len(&mut vi_x, VALUE_INFO_NAME, b"x");
        let mut graph = Vec::new();
        put_len(&mut graph, GRAPH_INITIALIZER, &weight);
        put_len(&mut graph, GRAPH_INPUT, &vi_x);
        put_len(&mut graph, GRAPH_INPUT, &vi_w);
        let mut m = Vec::new();
        put_len(&mut m, MODEL_GRAPH, &graph);
        let (out, n) = drop_initializer_inputs(&m).unwrap();
        assert_eq!(n, 1);
        let mut graph = Vec::new();
        put_len(&mut graph, GRAPH_INITIALIZER, &weight);
        put_len(&mut graph, GRAPH_INPUT, &vi_x);
        let mut want = Vec::new();
        put_len(&mut want, MODEL_GRAPH, &graph);
        assert_eq!(out, want);
    }

    #[test]
    fn a_missing_name_and_garbage_are_errors() {
        let dims = HashMap::from([("y", vec![Dim::sym("B")])]);
        assert!(set_io_dims(&model(), &dims).is_err());
        let mut bad = model();
        bad.truncate(bad.len() - 3);
        let dims = HashMap::from([("x", vec![Dim::sym("B")])]);
        assert!(set_io_dims(&bad, &dims).is_err());
    }
}
