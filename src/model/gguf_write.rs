//! Writing GGUF v3: the inverse of [`super::gguf`]'s reader, for files made from others — the
//! tests' and the fuzzer's variants of a real model (another architecture, a wrong head count,
//! a huge array) and small seed files.

use std::collections::BTreeMap;

use super::gguf::{GgmlType, GgufFile, MetaValue, TensorInfo};

/// Alignment used when the metadata names none (as the reader assumes).
const DEFAULT_ALIGNMENT: u64 = 32;

/// The bytes of a GGUF v3 file holding `metadata` and `tensors` (each with its raw data, in
/// order; the infos' offsets are recomputed). Arrays are written with their first element's
/// type (an empty array as `uint32`).
pub fn encode(metadata: &BTreeMap<String, MetaValue>, tensors: &[(TensorInfo, &[u8])]) -> Vec<u8> {
    let alignment = match metadata.get("general.alignment") {
        Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        _ => DEFAULT_ALIGNMENT,
    };
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_str(&mut out, key);
        out.extend(type_id(value).to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0u64;
    for (info, data) in tensors {
        put_str(&mut out, &info.name);
        out.extend((info.dims.len() as u32).to_le_bytes());
        info.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(ggml_id(info.ggml_type).to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = (offset + data.len() as u64).next_multiple_of(alignment);
    }
    for (_, data) in tensors {
        out.resize((out.len() as u64).next_multiple_of(alignment) as usize, 0);
        out.extend_from_slice(data);
    }
    out
}

/// `file` rewritten after `edit` has changed its metadata and tensor table (tensors keep their
/// data by name; a tensor `edit` adds must be given with its data in `added`).
pub fn rewrite(
    file: &GgufFile,
    edit: impl FnOnce(&mut BTreeMap<String, MetaValue>, &mut Vec<TensorInfo>),
    added: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut metadata = file.metadata().clone();
    let mut infos = file.tensors().to_vec();
    edit(&mut metadata, &mut infos);
    let tensors: Vec<(TensorInfo, &[u8])> = infos
        .into_iter()
        .map(|info| {
            let data = match added.iter().find(|(name, _)| *name == info.name) {
                Some((_, data)) => data,
                None => file.tensor_data(&info.name).expect("a tensor of the file, or one added with its data"),
            };
            (info, data)
        })
        .collect();
    encode(&metadata, &tensors)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn type_id(value: &MetaValue) -> u32 {
    match value {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.extend(v.to_le_bytes()),
        MetaValue::U16(v) => out.extend(v.to_le_bytes()),
        MetaValue::I16(v) => out.extend(v.to_le_bytes()),
        MetaValue::U32(v) => out.extend(v.to_le_bytes()),
        MetaValue::I32(v) => out.extend(v.to_le_bytes()),
        MetaValue::F32(v) => out.extend(v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::Array(items) => {
            out.extend(items.first().map_or(4, type_id).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
        MetaValue::U64(v) => out.extend(v.to_le_bytes()),
        MetaValue::I64(v) => out.extend(v.to_le_bytes()),
        MetaValue::F64(v) => out.extend(v.to_le_bytes()),
    }
}

fn ggml_id(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q8_0 => 8,
        GgmlType::Q4_K => 12,
        GgmlType::Q6_K => 14,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_written_file_reads_back_the_same() {
        let mut metadata = BTreeMap::new();
        metadata.insert("general.architecture".to_string(), MetaValue::Str("llama".into()));
        metadata.insert("n".to_string(), MetaValue::U32(7));
        metadata.insert("xs".to_string(), MetaValue::Array(vec![MetaValue::F32(0.5), MetaValue::F32(-1.0)]));
        metadata.insert("empty".to_string(), MetaValue::Array(vec![]));
        let a: Vec<u8> = [1.0f32, 2.0, 3.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = [4.0f32].iter().flat_map(|x| x.to_le_bytes()).collect();
        let info =
            |name: &str, n: u64| TensorInfo { name: name.into(), dims: vec![n], ggml_type: GgmlType::F32, offset: 0 };
        let bytes = encode(&metadata, &[(info("a", 3), &a), (info("b", 1), &b)]);
        let file = GgufFile::from_bytes(PathBuf::from("w.gguf"), bytes).unwrap();
        assert_eq!(file.metadata(), &metadata);
        assert_eq!(file.dequantize("a").unwrap(), [1.0, 2.0, 3.0]);
        assert_eq!(file.dequantize("b").unwrap(), [4.0]);
        // a rewrite keeps the data and applies the edit
        let again = rewrite(&file, |m, _| drop(m.insert("n".into(), MetaValue::U32(8))), &[]);
        let again = GgufFile::from_bytes(PathBuf::from("w2.gguf"), again).unwrap();
        assert_eq!(again.get_u32("n").unwrap(), 8);
        assert_eq!(again.dequantize("a").unwrap(), [1.0, 2.0, 3.0]);
    }
}
