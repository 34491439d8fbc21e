//! A SentencePiece-style tokenizer over a GGUF vocabulary with scores (`tokenizer.ggml.model =
//! "llama"`), as llama.cpp runs it (`llm_tokenizer_spm` in `llama-vocab.cpp`): Gemma 3's.
//!
//! 1. **Literal tokens first.** The text is split at every occurrence of a control, user-defined
//!    or unknown token's text, longest first (Gemma's vocabulary has 165 user-defined tokens:
//!    runs of newlines, tabs and spaces among them, which so always come out whole), as llama.cpp
//!    does when asked to parse special tokens.
//! 2. **Each piece between them** has its spaces replaced by `▁` (U+2581; no space is prefixed,
//!    `add_space_prefix` being false for Gemma) and is split into UTF-8 characters.
//! 3. **Merges by score.** Every adjacent pair whose joined text is a token is queued by that
//!    token's score; the best (on a tie, the leftmost) is merged and its new neighbours queued,
//!    until no pair is left. This is SentencePiece's BPE-by-score, not GPT-2's ranked merges.
//! 4. **Byte fallback.** A character that is no token becomes its UTF-8 bytes' `<0xNN>` tokens.
//!
//! BOS is put first when the GGUF says so (`add_bos_token`). Decoding maps `▁` back to a space
//! and byte tokens to their bytes, and drops control tokens (llama.cpp's rendering without
//! special tokens).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::gguf::GgufFile;
use super::tokenizer::TokenizerError;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;
/// SentencePiece's visible space.
const SPACE: &str = "\u{2581}";

/// The vocabulary and what encoding needs of it.
#[derive(Debug, Clone)]
pub struct Spm {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    types: Vec<i32>,
    index: HashMap<Vec<u8>, u32>,
    /// Token of each byte value (`<0xNN>`).
    bytes: [u32; 256],
    /// Tokens matched literally in the text, longest first.
    literal: Vec<u32>,
    bos: u32,
    eos: u32,
    add_bos: bool,
}

/// One queued merge: the symbols at `left` and `right` (adjacent), whose joined text is a token of
/// `score` and `len` bytes.
#[derive(Debug)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The higher score first; on a tie, the smaller `left` (llama.cpp's `llm_bigram_spm::comparator`).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// A run of bytes of the text being merged: `start..start + len`, in a linked list of symbols.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    /// Build from the `tokenizer.ggml.*` metadata of a GGUF whose tokenizer model is `llama`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let invalid = |m: String| TokenizerError::Invalid(m);
        let model = gguf.get_str("tokenizer.ggml.model")?;
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        if (model, pre) != ("llama", "default") {
            return Err(TokenizerError::Unsupported { model: model.into(), pre: pre.into() });
        }
        if gguf.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true) {
            return Err(invalid("add_space_prefix is set or missing: kvbench's SentencePiece tokenizer prefixes no space (Gemma's does not)".into()));
        }
        let pieces: Vec<Vec<u8>> =
            gguf.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(|t| t.as_bytes().to_vec()).collect();
        let scores = gguf.get_f32_array("tokenizer.ggml.scores")?;
        let types = gguf.get_i32_array("tokenizer.ggml.token_type")?;
        let id = |key: &str| -> Result<u32, TokenizerError> {
            let id = gguf.get_u32(key)?;
            if (id as usize) < pieces.len() {
                Ok(id)
            } else {
                Err(invalid(format!("{key} = {id} is outside the vocabulary")))
            }
        };
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id")?, id("tokenizer.ggml.eos_token_id")?);
        let add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(true);
        Self::new(pieces, scores, types, bos, eos, add_bos)
    }

    /// Build from a vocabulary: each token's text, score and llama.cpp type.
    pub fn new(
        pieces: Vec<Vec<u8>>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: u32,
        eos: u32,
        add_bos: bool,
    ) -> Result<Self, TokenizerError> {
        let invalid = |m: String| TokenizerError::Invalid(m);
        if scores.len() != pieces.len() || types.len() != pieces.len() {
            return Err(invalid(format!(
                "{} tokens, {} scores, {} token types",
                pieces.len(),
                scores.len(),
                types.len()
            )));
        }
        if pieces.len() > u32::MAX as usize || bos as usize >= pieces.len() || eos as usize >= pieces.len() {
            return Err(invalid("BOS or EOS outside the vocabulary".into()));
        }
        let mut index = HashMap::with_capacity(pieces.len());
        for (id, piece) in (0u32..).zip(&pieces) {
            // llama.cpp keeps the last of duplicates; a real vocabulary has none
            index.insert(piece.clone(), id);
        }
        let mut bytes = [u32::MAX; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            let name = format!("<0x{b:02X}>");
            *slot = match index.get(name.as_bytes()) {
                Some(&id) => id,
                None => *index
                    .get(&[b as u8][..])
                    .ok_or_else(|| invalid(format!("no byte token {name}: the vocabulary cannot encode every text")))?,
            };
        }
        let mut literal: Vec<u32> = (0u32..)
            .zip(&types)
            .filter(|&(id, &t)| matches!(t, CONTROL | USER_DEFINED | UNKNOWN) && !pieces[id as usize].is_empty())
            .map(|(id, _)| id)
            .collect();
        literal.sort_by_key(|&id| std::cmp::Reverse(pieces[id as usize].len()));
        Ok(Self { pieces, scores, types, index, bytes, literal, bos, eos, add_bos })
    }

    /// Token ids of `text`, BOS first where the vocabulary adds it.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            out.push(self.bos);
        }
        self.encode_into(text, &mut out);
        out
    }

    /// Token ids of `text` without a BOS (a continuation of an encoded prompt).
    pub fn encode_pieces(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut out);
        out
    }

    fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(raw) => self.merge(&raw.replace(' ', SPACE), out),
            }
        }
    }

    /// `text` cut at the literal tokens, longest first, each occurrence left to right.
    fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &id in &self.literal {
            let Ok(needle) = std::str::from_utf8(&self.pieces[id as usize]) else { continue };
            if !text.contains(needle) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + needle.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The score-ordered merges of one escaped piece of text, appended to `out`.
    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        let bytes = text.as_bytes();
        let mut symbols: Vec<Symbol> = Vec::with_capacity(bytes.len());
        for (i, (start, ch)) in text.char_indices().enumerate() {
            symbols.push(Symbol { start, len: ch.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
        }
        let Some(last) = symbols.last_mut() else { return };
        last.next = None;
        let mut queue = BinaryHeap::new();
        let push = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
            let (Some(left), Some(right)) = (left, right) else { return };
            let (l, r) = (symbols[left], symbols[right]);
            let joined = &bytes[l.start..r.start + r.len];
            if let Some(&id) = self.index.get(joined) {
                queue.push(Bigram { score: self.scores[id as usize], left, right, len: joined.len() });
            }
        };
        for i in 1..symbols.len() {
            push(&mut queue, &symbols, Some(i - 1), Some(i));
        }
        while let Some(Bigram { left, right, len, .. }) = queue.pop() {
            let (l, r) = (symbols[left], symbols[right]);
            // a symbol already merged into another, or a pair that has changed since it was queued
            if l.len == 0 || r.len == 0 || l.len + r.len != len {
                continue;
            }
            symbols[left].len += r.len;
            symbols[right].len = 0;
            symbols[left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(left);
            }
            push(&mut queue, &symbols, symbols[left].prev, Some(left));
            push(&mut queue, &symbols, Some(left), symbols[left].next);
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &bytes[s.start..s.start + s.len];
            match self.index.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.iter().map(|&b| self.bytes[b as usize])),
            }
            at = s.next;
        }
    }

    /// The text of `ids`: `▁` as a space, byte tokens as their bytes, control tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            let piece =
                self.pieces.get(id as usize).ok_or(TokenizerError::UnknownId { id, vocab_size: self.pieces.len() })?;
            match self.types[id as usize] {
                CONTROL => {}
                BYTE => bytes.push(byte_of(piece).unwrap_or(b'?')),
                NORMAL | USER_DEFINED | UNKNOWN => {
                    bytes.extend_from_slice(&String::from_utf8_lossy(piece).replace(SPACE, " ").into_bytes())
                }
                _ => bytes.extend_from_slice(piece),
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The id of the token whose text is `text`, if any.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.index.get(text.as_bytes()).copied()
    }

    /// The BOS token.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The EOS token.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
}

/// The byte of a `<0xNN>` token's text.
fn byte_of(piece: &[u8]) -> Option<u8> {
    let hex = piece.strip_prefix(b"<0x")?.strip_suffix(b">")?;
    u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// A piece of the text: raw, or one literal token.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vocabulary of: 0 `<unk>`, 1 `<bos>`, 2 `<eos>`, 3..259 the byte tokens, then `words`
    /// (normal, with their scores), then `user` (user-defined).
    fn vocab(words: &[(&str, f32)], user: &[&str]) -> Spm {
        let mut pieces: Vec<Vec<u8>> = vec![b"<unk>".to_vec(), b"<bos>".to_vec(), b"<eos>".to_vec()];
        let mut types = vec![UNKNOWN, CONTROL, CONTROL];
        pieces.extend((0..256).map(|b| format!("<0x{b:02X}>").into_bytes()));
        types.extend([BYTE; 256]);
        let mut scores = vec![0.0; pieces.len()];
        for (w, s) in words {
            pieces.push(w.as_bytes().to_vec());
            scores.push(*s);
            types.push(NORMAL);
        }
        for u in user {
            pieces.push(u.as_bytes().to_vec());
            scores.push(-1000.0);
            types.push(USER_DEFINED);
        }
        Spm::new(pieces, scores, types, 1, 2, true).unwrap()
    }

    fn pieces(spm: &Spm, text: &str) -> Vec<String> {
        spm.encode(text).iter().map(|&id| String::from_utf8_lossy(&spm.pieces[id as usize]).into_owned()).collect()
    }

    #[test]
    fn merges_go_by_score_not_by_position() {
        // "abc": "ab" (score 1) and "bc" (score 2) compete; the better, "bc", wins, then "abc"
        // does not exist, so a + bc
        let spm = vocab(&[("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", 1.0), ("bc", 2.0)], &[]);
        assert_eq!(pieces(&spm, "abc"), ["<bos>", "a", "bc"]);
        let spm = vocab(&[("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", 3.0), ("bc", 2.0), ("abc", 0.5)], &[]);
        assert_eq!(pieces(&spm, "abc"), ["<bos>", "abc"]);
        // a tie goes to the leftmost pair: "aaa" → aa + a
        let spm = vocab(&[("a", 0.0), ("aa", 1.0)], &[]);
        assert_eq!(pieces(&spm, "aaa"), ["<bos>", "aa", "a"]);
    }

    #[test]
    fn spaces_become_the_visible_space_and_are_merged_like_letters() {
        let spm = vocab(&[("▁", 0.0), ("h", 0.0), ("i", 0.0), ("hi", 1.0), ("▁hi", 2.0)], &[]);
        assert_eq!(pieces(&spm, "hi hi"), ["<bos>", "hi", "▁hi"]);
        assert_eq!(spm.decode(&spm.encode("hi hi")).unwrap(), "hi hi");
    }

    #[test]
    fn a_character_outside_the_vocabulary_falls_back_to_its_bytes() {
        let spm = vocab(&[("a", 0.0)], &[]);
        // é is C3 A9
        assert_eq!(pieces(&spm, "aé"), ["<bos>", "a", "<0xC3>", "<0xA9>"]);
        assert_eq!(spm.decode(&spm.encode("aé")).unwrap(), "aé");
    }

    #[test]
    fn literal_tokens_are_cut_out_first_longest_first() {
        let spm = vocab(&[("a", 0.0), ("\n", 0.0)], &["\n", "\n\n", "<b>"]);
        assert_eq!(pieces(&spm, "a\n\n\na<b>a"), ["<bos>", "a", "\n\n", "\n", "a", "<b>", "a"]);
        // control tokens' text too: <eos> in the text is the EOS token
        assert_eq!(pieces(&spm, "a<eos>"), ["<bos>", "a", "<eos>"]);
        assert_eq!(spm.decode(&spm.encode("a<eos>")).unwrap(), "a");
    }

    #[test]
    fn the_empty_text_is_bos_alone() {
        let spm = vocab(&[], &[]);
        assert_eq!(spm.encode(""), [1]);
    }
}
