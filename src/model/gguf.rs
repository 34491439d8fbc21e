//! A small, self-contained reader for GGUF v3 model files, with dequantization
//! of the tensor types we need to f32.
//!
//! # Why this exists
//!
//! The benchmark runs a real model (SmolLM2-135M-Instruct) whose weights ship
//! as a single quantized GGUF file. We only need to *read* that file once at
//! start-up and turn every tensor into plain `f32` rows, so a full GGML runtime
//! (or a crate that pulls one in) would be overkill. This module does exactly
//! that: it parses the container, validates every offset and length against the
//! file size, and dequantizes the block formats the model uses.
//!
//! # The format
//!
//! Everything is little endian:
//!
//! 1. **Header**: magic `b"GGUF"`, `u32` version (only 3 is accepted),
//!    `u64` tensor count, `u64` metadata key/value count.
//! 2. **Metadata**: for each entry a string key, a `u32` value type and the
//!    value. Strings are a `u64` byte length followed by UTF-8 bytes; arrays are
//!    a `u32` element type, a `u64` length and the elements (see [`MetaValue`]).
//! 3. **Tensor infos**: for each tensor its name, `u32` number of dimensions,
//!    that many `u64` dimensions (GGML order: `ne0`, the fastest-varying one,
//!    first), a `u32` GGML type and a `u64` offset relative to the data section.
//! 4. **Padding** up to the alignment given by the `general.alignment` key
//!    (default 32), then the **data section**, which holds the tensor data.
//!
//! # Design decisions
//!
//! * The whole file is read into memory with [`std::fs::read`] (the model is
//!   ~100 MB): no `unsafe` mmap, and parsing works on a plain byte slice, which
//!   also makes [`GgufFile::from_bytes`] trivial to test with synthetic files.
//! * All tensors are validated when the file is opened (type known, row length
//!   a multiple of the block size, data inside the file, offsets aligned), so
//!   [`GgufFile::dequantize`] can only fail for an unknown tensor name.
//! * Lengths read from the file are never trusted for allocation: a string or
//!   array length is checked against the bytes that remain before anything is
//!   sliced or reserved, so a corrupt file yields an error, never a panic or an
//!   out-of-memory abort.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::f16;

use super::kquants;

/// Magic bytes at the start of every GGUF file.
const MAGIC: [u8; 4] = *b"GGUF";
/// The only container version this reader understands.
const SUPPORTED_VERSION: u32 = 3;
/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML never has more than four dimensions.
const MAX_DIMS: u32 = 4;
/// Metadata array elements a file may hold in all: a tokenizer of 262,144 tokens needs about
/// 800k (tokens, scores, types), a byte-level BPE's merges as many again.
const MAX_ARRAY_ELEMENTS: u64 = 1 << 22;
/// Arrays of arrays are legal; cap the nesting so a hostile file cannot
/// exhaust the stack.
const MAX_ARRAY_DEPTH: usize = 8;

/// Everything that can go wrong while reading a GGUF file.
///
/// Every message names the file, so errors are useful without extra context.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be read.
    #[error("{}: cannot read gguf file", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{}: bad magic {found:02x?}, expected \"GGUF\"", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The bytes found instead.
        found: Vec<u8>,
    },
    /// The container version is not 3.
    #[error("{}: unsupported gguf version {version}, only version 3 is supported", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        version: u32,
    },
    /// The file ends (or a tensor's data ends) before something that must be there.
    #[error("{}: file is truncated: {what}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read, where, and how many bytes were missing.
        what: String,
    },
    /// A metadata value has a type id outside the GGUF specification.
    #[error("{}: metadata key {key:?} has unknown value type {value_type}", path.display())]
    UnknownValueType {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// The unknown type id.
        value_type: u32,
    },
    /// A tensor uses a GGML type this reader cannot dequantize.
    #[error("{}: tensor {tensor:?} has unsupported ggml type {ggml_type}", path.display())]
    UnknownTensorType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The GGML type id.
        ggml_type: u32,
    },
    /// A tensor's shape, offset or size is inconsistent.
    #[error("{}: tensor {tensor:?} is invalid: {reason}", path.display())]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Structurally invalid content that is not a truncation.
    #[error("{}: invalid gguf file: {what}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A requested tensor does not exist.
    #[error("{}: tensor {name:?} not found", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A requested metadata key does not exist.
    #[error("{}: metadata key {key:?} not found", path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
    },
    /// A metadata key exists but holds a value of another type.
    #[error("{}: metadata key {key:?} is not {expected}", path.display())]
    WrongKeyType {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// The type that was asked for.
        expected: &'static str,
    },
}

/// A metadata value, one variant per GGUF value type (type ids in brackets).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8` (0).
    U8(u8),
    /// `int8` (1).
    I8(i8),
    /// `uint16` (2).
    U16(u16),
    /// `int16` (3).
    I16(i16),
    /// `uint32` (4).
    U32(u32),
    /// `int32` (5).
    I32(i32),
    /// `float32` (6).
    F32(f32),
    /// `bool` (7), one byte that must be 0 or 1.
    Bool(bool),
    /// `string` (8): `u64` length, then UTF-8 bytes.
    Str(String),
    /// `array` (9): `u32` element type, `u64` length, then the elements.
    Array(Vec<MetaValue>),
    /// `uint64` (10).
    U64(u64),
    /// `int64` (11).
    I64(i64),
    /// `float64` (12).
    F64(f64),
}

impl MetaValue {
    /// The value as an `i128` if it is any integer type (lossless for all of them).
    fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// The GGML tensor types this reader can dequantize.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// Plain `f32` (type id 0).
    F32,
    /// IEEE half precision (1).
    F16,
    /// 32-element blocks of 4-bit values with one scale (2).
    Q4_0,
    /// 32-element blocks of 4-bit values with a scale and a minimum (3).
    Q4_1,
    /// 32-element blocks of 5-bit values with one scale (6).
    Q5_0,
    /// 32-element blocks of 8-bit values with one scale (8).
    Q8_0,
    /// 256-element super-blocks of 4-bit values, 6-bit scales and minima per 32 (12).
    Q4_K,
    /// 256-element super-blocks of 6-bit values, 8-bit scales per 16 (14).
    Q6_K,
}

impl GgmlType {
    /// Number of elements in one block (1 for the plain float types).
    pub fn block_len(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q6_K => kquants::SUPER_BLOCK,
        }
    }

    /// Number of bytes one block occupies in the file.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => kquants::Q5_0_BYTES,
            Self::Q8_0 => 34,
            Self::Q4_K => kquants::Q4_K_BYTES,
            Self::Q6_K => kquants::Q6_K_BYTES,
        }
    }
}

/// Converts a GGML type id; the error is the unsupported id itself, which the
/// parser turns into [`GgufError::UnknownTensorType`] with the tensor's name.
impl TryFrom<u32> for GgmlType {
    type Error = u32;

    fn try_from(id: u32) -> Result<Self, u32> {
        match id {
            0 => Ok(Self::F32),
            1 => Ok(Self::F16),
            2 => Ok(Self::Q4_0),
            3 => Ok(Self::Q4_1),
            6 => Ok(Self::Q5_0),
            8 => Ok(Self::Q8_0),
            12 => Ok(Self::Q4_K),
            14 => Ok(Self::Q6_K),
            other => Err(other),
        }
    }
}

/// Description of one tensor, as stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` (`ne0`) varies fastest, i.e. it is
    /// the row length; a `[576, 49152]` tensor has 49152 rows of 576.
    pub dims: Vec<u64>,
    /// How the data is encoded.
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data relative to the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Total number of elements (the product of all dimensions).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().fold(1, |acc, &d| acc.saturating_mul(d))
    }
}

/// A parsed GGUF file, holding its metadata, tensor table and all its bytes.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    /// Absolute byte offset of the data section in `data`.
    data_start: usize,
    data: Vec<u8>,
}

impl GgufFile {
    /// Reads and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let bytes = std::fs::read(path).map_err(|source| GgufError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(path.to_path_buf(), bytes)
    }

    /// Parses an in-memory GGUF image; `path_for_messages` only labels errors.
    pub fn from_bytes(path_for_messages: PathBuf, bytes: Vec<u8>) -> Result<Self, GgufError> {
        let (metadata, tensors, data_start) = Parser::new(&path_for_messages, &bytes).parse()?;
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(Self { path: path_for_messages, metadata, tensors, index, data_start, data: bytes })
    }

    /// The path the file was opened from (or the label given to `from_bytes`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Looks a tensor up by name.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor { path: self.path.clone(), name: name.into() })
    }

    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self.tensor_info(name)?;
        // Both values were range-checked against the file size in `parse`.
        let start = self.data_start + info.offset as usize;
        Ok(&self.data[start..start + tensor_byte_len(info) as usize])
    }

    fn get(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey { path: self.path.clone(), key: key.into() })
    }

    fn wrong_type(&self, key: &str, expected: &'static str) -> GgufError {
        GgufError::WrongKeyType { path: self.path.clone(), key: key.into(), expected }
    }

    fn get_array(&self, key: &str, expected: &'static str) -> Result<&[MetaValue], GgufError> {
        match self.get(key)? {
            MetaValue::Array(items) => Ok(items),
            _ => Err(self.wrong_type(key, expected)),
        }
    }

    /// A `u32` value; any integer type whose value fits is accepted.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let value = self.get(key)?;
        value
            .as_integer()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| self.wrong_type(key, "an integer that fits in u32"))
    }

    /// An `f32` value; `f64` values are narrowed.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        match *self.get(key)? {
            MetaValue::F32(v) => Ok(v),
            MetaValue::F64(v) => Ok(v as f32),
            _ => Err(self.wrong_type(key, "a float")),
        }
    }

    /// Whether the metadata has `key`, of any type.
    pub fn has(&self, key: &str) -> bool {
        self.metadata.contains_key(key)
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match *self.get(key)? {
            MetaValue::Bool(v) => Ok(v),
            _ => Err(self.wrong_type(key, "a boolean")),
        }
    }

    /// An array of floats (`f64` elements narrowed), e.g. `tokenizer.ggml.scores`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        const EXPECTED: &str = "an array of floats";
        self.get_array(key, EXPECTED)?
            .iter()
            .map(|v| match *v {
                MetaValue::F32(x) => Ok(x),
                MetaValue::F64(x) => Ok(x as f32),
                _ => Err(self.wrong_type(key, EXPECTED)),
            })
            .collect()
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            MetaValue::Str(s) => Ok(s),
            _ => Err(self.wrong_type(key, "a string")),
        }
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        const EXPECTED: &str = "an array of strings";
        self.get_array(key, EXPECTED)?
            .iter()
            .map(|v| match v {
                MetaValue::Str(s) => Ok(s.as_str()),
                _ => Err(self.wrong_type(key, EXPECTED)),
            })
            .collect()
    }

    /// An array of integers that all fit in `i32` (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        const EXPECTED: &str = "an array of integers that fit in i32";
        self.get_array(key, EXPECTED)?
            .iter()
            .map(|v| v.as_integer().and_then(|i| i32::try_from(i).ok()).ok_or_else(|| self.wrong_type(key, EXPECTED)))
            .collect()
    }

    /// Dequantize a whole tensor to f32, row-major with rows = product of
    /// `dims[1..]`, row length = `dims[0]`.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        let bytes = self.tensor_data(name)?;
        let mut out = vec![0.0f32; info.n_elements() as usize];
        match info.ggml_type {
            GgmlType::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            GgmlType::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            GgmlType::Q4_0 => dequantize_q4_0(bytes, &mut out),
            GgmlType::Q4_1 => dequantize_q4_1(bytes, &mut out),
            GgmlType::Q8_0 => dequantize_q8_0(bytes, &mut out),
            t @ (GgmlType::Q5_0 | GgmlType::Q4_K | GgmlType::Q6_K) => kquants::dequantize(t, bytes, &mut out),
        }
        Ok(out)
    }
}

/// Byte length of a tensor's data. Only valid for tensors that passed
/// validation (no overflow, whole blocks).
fn tensor_byte_len(info: &TensorInfo) -> u64 {
    let t = info.ggml_type;
    info.n_elements() / t.block_len() as u64 * t.block_bytes() as u64
}

/// Reads the `f16` scale stored in the first two bytes of a block.
fn f16_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// Checks the buffer sizes shared by all the 32-element block formats.
fn check_blocks(blocks: &[u8], out: &[f32], block_bytes: usize) {
    assert!(
        blocks.len().is_multiple_of(block_bytes) && out.len() == blocks.len() / block_bytes * 32,
        "dequantize: {} input bytes do not hold whole {block_bytes}-byte blocks for {} outputs",
        blocks.len(),
        out.len()
    );
}

/// Dequantizes Q8_0: 34-byte blocks of an f16 scale `d` and 32 `i8` values
/// `q`; `x = d * q`.
///
/// # Panics
/// If `blocks` is not whole blocks or `out` does not hold 32 values per block
/// (a caller bug; [`GgufFile::dequantize`] validates sizes beforehand).
pub fn dequantize_q8_0(blocks: &[u8], out: &mut [f32]) {
    check_blocks(blocks, out, 34);
    for (block, out) in blocks.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(block, 0);
        for (o, &q) in out.iter_mut().zip(&block[2..]) {
            *o = d * f32::from(q as i8);
        }
    }
}

/// Dequantizes Q4_1: 20-byte blocks of an f16 scale `d`, an f16 minimum `m`
/// and 16 bytes of 4-bit values `q`; `x = d * q + m`. As in ggml, the low
/// nibbles hold elements 0..16 and the high nibbles elements 16..32.
///
/// # Panics
/// As [`dequantize_q8_0`], for 20-byte blocks.
pub fn dequantize_q4_1(blocks: &[u8], out: &mut [f32]) {
    check_blocks(blocks, out, 20);
    for (block, out) in blocks.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        let (lo, hi) = out.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[4..]) {
            *l = d * f32::from(q & 0x0f) + m;
            *h = d * f32::from(q >> 4) + m;
        }
    }
}

/// Dequantizes Q4_0: 18-byte blocks of an f16 scale `d` and 16 bytes of
/// 4-bit values `q`; `x = d * (q - 8)`, with the same nibble layout as Q4_1.
///
/// # Panics
/// As [`dequantize_q8_0`], for 18-byte blocks.
pub fn dequantize_q4_0(blocks: &[u8], out: &mut [f32]) {
    check_blocks(blocks, out, 18);
    for (block, out) in blocks.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
        let d = f16_at(block, 0);
        let (lo, hi) = out.split_at_mut(16);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&block[2..]) {
            *l = d * f32::from(i16::from(q & 0x0f) - 8);
            *h = d * f32::from(i16::from(q >> 4) - 8);
        }
    }
}

type Parsed = (BTreeMap<String, MetaValue>, Vec<TensorInfo>, usize);

/// What the parser is reading, for error messages; formatted only on error.
#[derive(Clone, Copy)]
enum What<'a> {
    Header(&'static str),
    Value(&'a str),
    Tensor(&'a str),
}

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Header(what) => f.write_str(what),
            Self::Value(key) => write!(f, "value of metadata key {key:?}"),
            Self::Tensor(name) => write!(f, "info of tensor {name:?}"),
        }
    }
}

/// A bounds-checked cursor over the file's bytes.
struct Parser<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    /// Metadata array elements read so far (see [`MAX_ARRAY_ELEMENTS`]).
    array_elements: u64,
}

impl<'a> Parser<'a> {
    fn new(path: &'a Path, bytes: &'a [u8]) -> Self {
        Self { path, bytes, pos: 0, array_elements: 0 }
    }

    fn truncated(&self, what: impl std::fmt::Display, needed: u64) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: format!(
                "{what} needs {needed} bytes at offset {}, but the file has {} bytes",
                self.pos,
                self.bytes.len()
            ),
        }
    }

    fn invalid(&self, what: String) -> GgufError {
        GgufError::Invalid { path: self.path.to_path_buf(), what }
    }

    fn take(&mut self, n: u64, what: What) -> Result<&'a [u8], GgufError> {
        let remaining = self.bytes.len() - self.pos;
        let n = usize::try_from(n).ok().filter(|&n| n <= remaining).ok_or_else(|| self.truncated(what, n))?;
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: What) -> Result<[u8; N], GgufError> {
        let slice = self.take(N as u64, what)?;
        let mut out = [0; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u32(&mut self, what: What) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: What) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: What) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.invalid(format!("{what} is not utf-8")))
    }

    fn parse(mut self) -> Result<Parsed, GgufError> {
        let magic: [u8; 4] = self.array(What::Header("magic"))?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { path: self.path.to_path_buf(), found: magic.to_vec() });
        }
        let version = self.u32(What::Header("version"))?;
        if version != SUPPORTED_VERSION {
            return Err(GgufError::UnsupportedVersion { path: self.path.to_path_buf(), version });
        }
        let n_tensors = self.u64(What::Header("tensor count"))?;
        let n_kv = self.u64(What::Header("metadata count"))?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = self.string(What::Header("metadata key"))?;
            let value_type = self.u32(What::Header("metadata value type"))?;
            let value = self.value(&key, value_type, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(self.invalid(format!("duplicate metadata key {key:?}")));
            }
        }

        // Every tensor info takes at least 24 bytes; do not trust the count for allocation.
        let mut tensors = Vec::with_capacity(usize::try_from(n_tensors).unwrap_or(0).min(1 << 16));
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let info = self.tensor_info()?;
            if !names.insert(info.name.clone()) {
                return Err(self.invalid(format!("duplicate tensor {:?}", info.name)));
            }
            tensors.push(info);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(self.invalid(format!("general.alignment must be a power of two u32, found {other:?}")));
            }
        };
        let data_start = (self.pos as u64).next_multiple_of(alignment);
        let data_len = (self.bytes.len() as u64).saturating_sub(data_start);
        for info in &tensors {
            self.check_tensor(info, alignment, data_len)?;
        }
        // `data_start` <= file length whenever a tensor exists; clamp for the empty case.
        let data_start = data_start.min(self.bytes.len() as u64) as usize;
        Ok((metadata, tensors, data_start))
    }

    fn value(&mut self, key: &str, value_type: u32, depth: usize) -> Result<MetaValue, GgufError> {
        let what = What::Value(key);
        Ok(match value_type {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)? {
                [0] => MetaValue::Bool(false),
                [1] => MetaValue::Bool(true),
                [b] => return Err(self.invalid(format!("{what}: bool byte {b} is not 0 or 1"))),
            },
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.invalid(format!("{what}: arrays nested too deeply")));
                }
                let elem_type = self.u32(what)?;
                let len = self.u64(what)?;
                // Each element takes at least one byte, so a length beyond the
                // remaining bytes is a truncation; checking first keeps a huge
                // length from turning into a huge allocation.
                if len > (self.bytes.len() - self.pos) as u64 {
                    return Err(self.truncated(format_args!("{what} ({len} array elements)"), len));
                }
                // an element is one byte in the file but a [`MetaValue`] (32 bytes) in memory:
                // a budget for them all keeps a file of one huge array from taking 32 times
                // its size (a 50 MB file had taken 1.6 GB)
                self.array_elements = self.array_elements.saturating_add(len);
                if self.array_elements > MAX_ARRAY_ELEMENTS {
                    return Err(self.invalid(format!(
                        "{what}: the metadata arrays hold more than {MAX_ARRAY_ELEMENTS} elements in all, \
                         more than any model's tokenizer needs"
                    )));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.into(),
                    value_type: other,
                });
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, GgufError> {
        let name = self.string(What::Header("tensor name"))?;
        let what = What::Tensor(&name);
        let n_dims = self.u32(what)?;
        if n_dims > MAX_DIMS {
            return Err(self.bad_tensor(&name, format!("{n_dims} dimensions, at most 4 allowed")));
        }
        let dims = (0..n_dims).map(|_| self.u64(what)).collect::<Result<Vec<_>, _>>()?;
        let type_id = self.u32(what)?;
        let ggml_type = GgmlType::try_from(type_id).map_err(|ggml_type| GgufError::UnknownTensorType {
            path: self.path.to_path_buf(),
            tensor: name.clone(),
            ggml_type,
        })?;
        let offset = self.u64(what)?;
        Ok(TensorInfo { name, dims, ggml_type, offset })
    }

    fn bad_tensor(&self, name: &str, reason: String) -> GgufError {
        GgufError::BadTensor { path: self.path.to_path_buf(), tensor: name.into(), reason }
    }

    /// Checks shape and placement so that slicing and dequantizing cannot fail later.
    fn check_tensor(&self, info: &TensorInfo, alignment: u64, data_len: u64) -> Result<(), GgufError> {
        let bad = |reason: String| self.bad_tensor(&info.name, reason);
        let t = info.ggml_type;
        let row_len = info.dims.first().copied().unwrap_or(1);
        if !row_len.is_multiple_of(t.block_len() as u64) {
            return Err(bad(format!(
                "row length {row_len} is not a multiple of the {t:?} block size {}",
                t.block_len()
            )));
        }
        if !info.offset.is_multiple_of(alignment) {
            return Err(bad(format!("offset {} is not aligned to {alignment}", info.offset)));
        }
        let n_bytes = info
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .and_then(|n| (n / t.block_len() as u64).checked_mul(t.block_bytes() as u64))
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| bad(format!("dimensions {:?} overflow", info.dims)))?;
        let end = info.offset.checked_add(n_bytes);
        if end.is_none_or(|end| end > data_len) {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: format!(
                    "tensor {:?} needs bytes {}..{} of the data section, which has {data_len} bytes",
                    info.name,
                    info.offset,
                    u128::from(info.offset) + u128::from(n_bytes)
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const F16_HALF: [u8; 2] = 0x3800u16.to_le_bytes(); // 0.5
    const F16_MINUS_ONE: [u8; 2] = 0xbc00u16.to_le_bytes(); // -1.0
    const F16_TWO: [u8; 2] = 0x4000u16.to_le_bytes(); // 2.0

    pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }

    /// A metadata entry: key, value type id, encoded value.
    pub(crate) type Kv = (&'static str, u32, Vec<u8>);
    /// A tensor info: name, dims, ggml type id, offset.
    pub(crate) type Ti = (&'static str, Vec<u64>, u32, u64);

    /// Serialises a GGUF v3 image with the default 32-byte alignment.
    pub(crate) fn build(kvs: &[Kv], tensors: &[Ti], data: &[u8]) -> Vec<u8> {
        build_aligned(kvs, tensors, data, 32)
    }

    fn build_aligned(kvs: &[Kv], tensors: &[Ti], data: &[u8], alignment: usize) -> Vec<u8> {
        let mut buf = b"GGUF".to_vec();
        buf.extend(3u32.to_le_bytes());
        buf.extend((tensors.len() as u64).to_le_bytes());
        buf.extend((kvs.len() as u64).to_le_bytes());
        for (key, ty, value) in kvs {
            put_str(&mut buf, key);
            buf.extend(ty.to_le_bytes());
            buf.extend(value);
        }
        for (name, dims, ty, offset) in tensors {
            put_str(&mut buf, name);
            buf.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| buf.extend(d.to_le_bytes()));
            buf.extend(ty.to_le_bytes());
            buf.extend(offset.to_le_bytes());
        }
        buf.resize(buf.len().next_multiple_of(alignment), 0);
        buf.extend(data);
        buf
    }

    pub(crate) fn str_array(items: &[&str]) -> Vec<u8> {
        let mut v = 8u32.to_le_bytes().to_vec();
        v.extend((items.len() as u64).to_le_bytes());
        items.iter().for_each(|s| put_str(&mut v, s));
        v
    }

    /// A Q8_0 block with d = 0.5 and q = [0, 1, -1, 127, -128, 2, 3, ..., 28].
    fn q8_block() -> Vec<u8> {
        let mut b = F16_HALF.to_vec();
        b.extend([0u8, 1, 0xff, 0x7f, 0x80]);
        b.extend(2u8..=28);
        b
    }

    /// Two F32 rows of 4 and one Q8_0 row of 32, with assorted metadata.
    fn synthetic() -> Vec<u8> {
        let mut data: Vec<u8> =
            [1.0f32, -2.0, 3.5, 0.25, 5.0, 6.0, 7.0, -8.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        data.extend(q8_block());
        let mut name = Vec::new();
        put_str(&mut name, "llama");
        let mut ints = 5u32.to_le_bytes().to_vec();
        ints.extend(3u64.to_le_bytes());
        [1i32, 3, -4].iter().for_each(|v| ints.extend(v.to_le_bytes()));
        let kvs: Vec<Kv> = vec![
            ("general.architecture", 8, name),
            ("llama.block_count", 4, 2u32.to_le_bytes().to_vec()),
            ("big", 10, 7u64.to_le_bytes().to_vec()),
            ("negative", 5, (-1i32).to_le_bytes().to_vec()),
            ("eps", 6, 1e-5f32.to_le_bytes().to_vec()),
            ("flag", 7, vec![1]),
            ("tokens", 9, str_array(&["a", "b c", "é"])),
            ("types", 9, ints),
        ];
        build(&kvs, &[("a", vec![4, 2], 0, 0), ("b", vec![32, 1], 8, 32)], &data)
    }

    fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(PathBuf::from("/models/test.gguf"), bytes)
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut out = [0.0f32; 32];
        dequantize_q8_0(&q8_block(), &mut out);
        // d = 0.5: 0 -> 0, 1 -> 0.5, -1 -> -0.5, 127 -> 63.5, -128 -> -64, 2 -> 1, 28 -> 14.
        assert_eq!(out[..6], [0.0, 0.5, -0.5, 63.5, -64.0, 1.0]);
        assert_eq!(out[31], 14.0);
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1; byte 0 = 0x3a, byte 15 = 0xf0, bytes 1..15 = 0x21.
        let mut block = [F16_HALF, F16_MINUS_ONE].concat();
        block.push(0x3a);
        block.extend([0x21; 14]);
        block.push(0xf0);
        let mut out = [0.0f32; 32];
        dequantize_q4_1(&block, &mut out);
        assert_eq!(out[0], 4.0); // low nibble 0xa = 10: 0.5 * 10 - 1
        assert_eq!(out[16], 0.5); // high nibble 3: 0.5 * 3 - 1
        assert_eq!(out[1], -0.5); // 0x21 low nibble 1: 0.5 * 1 - 1
        assert_eq!(out[17], 0.0); // 0x21 high nibble 2: 0.5 * 2 - 1
        assert_eq!(out[15], -1.0); // 0xf0 low nibble 0: 0.5 * 0 - 1
        assert_eq!(out[31], 6.5); // 0xf0 high nibble 15: 0.5 * 15 - 1
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 2; byte 0 = 0x08, byte 1 = 0xf1, the rest 0x88 (both nibbles 8 -> 0).
        let mut block = F16_TWO.to_vec();
        block.extend([0x08, 0xf1]);
        block.extend([0x88; 14]);
        let mut out = [1.0f32; 32];
        dequantize_q4_0(&block, &mut out);
        assert_eq!(out[0], 0.0); // 2 * (8 - 8)
        assert_eq!(out[16], -16.0); // 2 * (0 - 8)
        assert_eq!(out[1], -14.0); // 2 * (1 - 8)
        assert_eq!(out[17], 14.0); // 2 * (15 - 8)
        assert!(out[2..16].iter().chain(&out[18..]).all(|&x| x == 0.0));
    }

    #[test]
    fn two_blocks_fill_consecutive_outputs() {
        let blocks = [q8_block(), q8_block()].concat();
        let mut out = [0.0f32; 64];
        dequantize_q8_0(&blocks, &mut out);
        assert_eq!(out[..32], out[32..]);
    }

    #[test]
    fn f32_and_f16_tensors() {
        let data: Vec<u8> = [0x3c00u16, 0xc000, 0x3800, 0x7bff].iter().flat_map(|v| v.to_le_bytes()).collect();
        let file = parse(build(&[], &[("h", vec![4], 1, 0)], &data)).unwrap();
        assert_eq!(file.dequantize("h").unwrap(), [1.0, -2.0, 0.5, 65504.0]);
        let file = parse(synthetic()).unwrap();
        assert_eq!(file.dequantize("a").unwrap(), [1.0, -2.0, 3.5, 0.25, 5.0, 6.0, 7.0, -8.0]);
    }

    #[test]
    fn synthetic_file_round_trip() {
        let file = parse(synthetic()).unwrap();
        assert_eq!(file.path(), Path::new("/models/test.gguf"));
        assert_eq!(file.metadata().len(), 8);
        assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.get_u32("llama.block_count").unwrap(), 2);
        assert_eq!(file.get_u32("big").unwrap(), 7);
        assert_eq!(file.get_f32("eps").unwrap(), 1e-5);
        assert_eq!(file.metadata()["flag"], MetaValue::Bool(true));
        assert_eq!(file.get_str_array("tokens").unwrap(), ["a", "b c", "é"]);
        assert_eq!(file.get_i32_array("types").unwrap(), [1, 3, -4]);

        let names: Vec<_> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let b = file.tensor_info("b").unwrap();
        assert_eq!((b.dims.as_slice(), b.ggml_type, b.offset), (&[32, 1][..], GgmlType::Q8_0, 32));
        let mut expected = [0.0f32; 32];
        dequantize_q8_0(&q8_block(), &mut expected);
        assert_eq!(file.dequantize("b").unwrap(), expected);
        assert_eq!(file.tensor_data("b").unwrap(), q8_block());
    }

    #[test]
    fn general_alignment_moves_the_data_section() {
        let kvs = [("general.alignment", 4, 256u32.to_le_bytes().to_vec())];
        let tensors = [("x", vec![2], 0, 0)];
        let data: Vec<u8> = [1.5f32, -3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let file = parse(build_aligned(&kvs, &tensors, &data, 256)).unwrap();
        assert_eq!(file.dequantize("x").unwrap(), [1.5, -3.0]);
        // With only 32-byte padding the data would start too early for 256.
        assert!(parse(build_aligned(&kvs, &tensors, &data, 32)).is_err());
        let kvs = [("general.alignment", 4, 48u32.to_le_bytes().to_vec())];
        let err = parse(build_aligned(&kvs, &tensors, &data, 48)).unwrap_err();
        assert!(matches!(err, GgufError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn lookup_errors() {
        let file = parse(synthetic()).unwrap();
        assert!(matches!(file.tensor_info("zz"), Err(GgufError::MissingTensor { .. })));
        assert!(matches!(file.dequantize("zz"), Err(GgufError::MissingTensor { .. })));
        let err = file.get_u32("nope").unwrap_err();
        assert!(matches!(err, GgufError::MissingKey { .. }));
        assert_eq!(err.to_string(), "/models/test.gguf: metadata key \"nope\" not found");
        assert!(matches!(file.get_u32("negative"), Err(GgufError::WrongKeyType { .. })));
        assert!(matches!(file.get_str("eps"), Err(GgufError::WrongKeyType { .. })));
        assert!(matches!(file.get_str_array("types"), Err(GgufError::WrongKeyType { .. })));
        assert!(matches!(file.get_i32_array("tokens"), Err(GgufError::WrongKeyType { .. })));
    }

    #[test]
    fn bad_magic() {
        let mut bytes = synthetic();
        bytes[..4].copy_from_slice(b"GGML");
        let err = parse(bytes).unwrap_err();
        assert!(matches!(err, GgufError::BadMagic { .. }), "{err:?}");
        assert!(err.to_string().contains("/models/test.gguf"), "{err}");
    }

    #[test]
    fn unsupported_version() {
        let mut bytes = synthetic();
        bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(parse(bytes), Err(GgufError::UnsupportedVersion { version: 2, .. })));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = synthetic();
        for len in 0..bytes.len() {
            let err = parse(bytes[..len].to_vec()).unwrap_err();
            assert!(matches!(err, GgufError::Truncated { .. }), "at {len}: {err:?}");
            assert!(err.to_string().contains("/models/test.gguf"), "{err}");
        }
    }

    #[test]
    fn huge_lengths_are_truncation_not_allocation() {
        let mut bytes = build(&[("k", 8, u64::MAX.to_le_bytes().to_vec())], &[], &[]);
        assert!(matches!(parse(bytes.clone()), Err(GgufError::Truncated { .. })));
        let mut array = 0u32.to_le_bytes().to_vec();
        array.extend((u64::MAX / 2).to_le_bytes());
        bytes = build(&[("k", 9, array)], &[], &[]);
        assert!(matches!(parse(bytes), Err(GgufError::Truncated { .. })));
        // A tensor count far beyond the file size.
        let mut bytes = build(&[], &[], &[]);
        bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(bytes), Err(GgufError::Truncated { .. })));
    }

    #[test]
    fn unknown_tensor_type() {
        // Q5_K (13) sits between two supported k-quants
        let err = parse(build(&[], &[("q5k", vec![256], 13, 0)], &[0; 176])).unwrap_err();
        assert!(
            matches!(&err, GgufError::UnknownTensorType { tensor, ggml_type: 13, .. } if tensor == "q5k"),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "/models/test.gguf: tensor \"q5k\" has unsupported ggml type 13");
    }

    #[test]
    fn unknown_value_type() {
        let err = parse(build(&[("k", 13, vec![0; 8])], &[], &[])).unwrap_err();
        assert!(matches!(err, GgufError::UnknownValueType { value_type: 13, .. }), "{err:?}");
    }

    #[test]
    fn invalid_tensors() {
        // Row length 16 is not a whole Q8_0 block.
        let err = parse(build(&[], &[("t", vec![16, 2], 8, 0)], &[0; 68])).unwrap_err();
        assert!(matches!(err, GgufError::BadTensor { .. }), "{err:?}");
        assert!(err.to_string().contains("not a multiple"), "{err}");
        // Data runs past the end of the file.
        let err = parse(build(&[], &[("t", vec![32, 2], 8, 0)], &[0; 67])).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
        // Offset far out of range, and dimensions whose product overflows.
        let err = parse(build(&[], &[("t", vec![32], 8, u64::MAX - 31)], &[0; 34])).unwrap_err();
        assert!(matches!(err, GgufError::Truncated { .. }), "{err:?}");
        let err = parse(build(&[], &[("t", vec![1 << 40, 1 << 40], 0, 0)], &[])).unwrap_err();
        assert!(matches!(err, GgufError::BadTensor { .. }), "{err:?}");
        // Misaligned offset and too many dimensions.
        let err = parse(build(&[], &[("t", vec![1], 0, 4)], &[0; 8])).unwrap_err();
        assert!(matches!(err, GgufError::BadTensor { .. }), "{err:?}");
        let err = parse(build(&[], &[("t", vec![1; 5], 0, 0)], &[0; 4])).unwrap_err();
        assert!(matches!(err, GgufError::BadTensor { .. }), "{err:?}");
    }

    #[test]
    fn io_error_names_the_path() {
        let err = GgufFile::open(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(matches!(err, GgufError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    }

    /// Checks the real SmolLM2 file (fetched on first use).
    #[test]
    fn real_model() {
        let path = crate::assets::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
        let embd = file.tensor_info("token_embd.weight").unwrap();
        assert_eq!((embd.dims.as_slice(), embd.ggml_type), (&[576, 49152][..], GgmlType::Q8_0));
        let q = file.tensor_info("blk.0.attn_q.weight").unwrap();
        assert_eq!(q.ggml_type, GgmlType::Q4_1);
        for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight"] {
            let values = file.dequantize(name).unwrap();
            let info = file.tensor_info(name).unwrap();
            assert_eq!(values.len() as u64, info.n_elements());
            assert!(values.iter().all(|v| v.is_finite()), "{name} has non-finite values");
            assert!(values.iter().any(|&v| v != 0.0), "{name} is all zeros");
        }
    }
}
