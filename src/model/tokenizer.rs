//! The model's tokenizer, rebuilt from the metadata embedded in its GGUF file.
//!
//! # Why build it from the GGUF
//!
//! The GGUF file already carries the complete vocabulary, the BPE merges and
//! the token types, so there is no separate `tokenizer.json` to ship or keep
//! in sync. We translate that metadata into a [`tokenizers::Tokenizer`] and let
//! the Hugging Face implementation do the actual BPE work.
//!
//! # Matching llama.cpp exactly
//!
//! The GGUF says `tokenizer.ggml.model = "gpt2"` and `tokenizer.ggml.pre =
//! "smollm"`. llama.cpp (`llama-vocab.cpp`, `LLAMA_VOCAB_PRE_TYPE_SMOLLM`)
//! pre-tokenizes such a vocabulary with two regexes applied in turn:
//!
//! 1. `\p{N}`: every digit becomes its own piece, so `2024` is always four
//!    tokens;
//! 2. the GPT-2 regex `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
//!    ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (llama.cpp's hand-written GPT-2
//!    splitter includes the trailing `\s+`).
//!
//! Here that is a [`Split`] on `\p{N}` with the `Isolated` behaviour followed by
//! a [`ByteLevel`] pre-tokenizer with `use_regex = true` (the same GPT-2 regex)
//! and `add_prefix_space = false`. The prefix space matters: generic GGUF
//! tokenizer loaders (candle's, for one) add one, which turns `Hello` into
//! ` Hello` and gives this model different ids than it was trained with. There
//! is no normalizer, no BOS is added (`tokenizer.ggml.add_bos_token` is false),
//! and decoding uses the byte-level decoder.
//!
//! Tokens whose type is control (3), user-defined (4) or unknown (2) are
//! registered as special tokens, as llama.cpp does when asked to parse special
//! tokens: `<|im_start|>` in the input text is matched literally and becomes a
//! single id instead of being split into `<`, `|`, `im`, and so on.

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use super::gguf::{GgufError, GgufFile};

/// Token types in `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`:
/// 2 unknown, 3 control, 4 user defined) that must be matched literally in the
/// input rather than split by BPE.
const LITERAL_TOKEN_TYPES: [i32; 3] = [2, 3, 4];

/// Everything that can go wrong while building or using the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer metadata could not be read from the GGUF file.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The GGUF describes a tokenizer this module does not implement.
    #[error("unsupported tokenizer: model {model:?} with pre-tokenizer {pre:?} (only gpt2 with smollm is supported)")]
    Unsupported {
        /// `tokenizer.ggml.model`.
        model: String,
        /// `tokenizer.ggml.pre`.
        pre: String,
    },
    /// The tokenizer metadata is inconsistent.
    #[error("invalid tokenizer metadata: {0}")]
    Invalid(String),
    /// The `tokenizers` crate rejected the vocabulary or merges.
    #[error("cannot build the tokenizer")]
    Build(#[source] tokenizers::Error),
    /// Encoding failed.
    #[error("cannot encode text")]
    Encode(#[source] tokenizers::Error),
    /// Decoding failed.
    #[error("cannot decode token ids")]
    Decode(#[source] tokenizers::Error),
    /// A token id outside the vocabulary was given to [`Tokenizer::decode`].
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// The number of tokens in the vocabulary.
        vocab_size: usize,
    },
}

/// The model's tokenizer, built from GGUF metadata: SmolLM2's byte-level BPE (`gpt2` with the
/// `smollm` pre-tokenizer), or a SentencePiece vocabulary of scores (`llama`, Gemma 3's;
/// [`super::spm`]). Any other is refused by name.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Inner,
    template: Template,
    vocab_size: usize,
    bos: u32,
    eos: u32,
    im_start: Option<u32>,
    im_end: Option<u32>,
    end_of_text: Option<u32>,
}

/// How a task prompt wraps the user's text for this model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// SmolLM2's ChatML user turn, with its default system prompt ([`chatml`]).
    ChatMl,
    /// A base model without a chat template (Gemma-3-270M): plain completion, the user's text
    /// as is and a newline before the answer.
    Plain,
}

impl Template {
    /// The text before the user's and the text after it, up to where the answer begins.
    pub fn halves(self) -> (&'static str, &'static str) {
        match self {
            Self::ChatMl => (CHATML_HEAD, "<|im_end|>\n<|im_start|>assistant\n"),
            Self::Plain => ("", "\n"),
        }
    }
}

/// The system prompt SmolLM2's chat template inserts (the literal, for `concat!`).
macro_rules! default_system_prompt {
    () => {
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    };
}

/// [`chatml`]'s text before the user's, with the default system prompt.
const CHATML_HEAD: &str = concat!("<|im_start|>system\n", default_system_prompt!(), "<|im_end|>\n<|im_start|>user\n");

#[derive(Debug, Clone)]
enum Inner {
    Bpe(Box<tokenizers::Tokenizer>),
    Spm(Box<super::spm::Spm>),
}

impl Tokenizer {
    /// Builds the tokenizer from the `tokenizer.ggml.*` metadata of `gguf`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model == "llama" {
            let spm = super::spm::Spm::from_gguf(gguf)?;
            let (vocab_size, bos, eos) = (spm.vocab_size(), spm.bos_id(), spm.eos_id());
            let end_of_turn = spm.token_id("<end_of_turn>");
            if gguf.has("tokenizer.chat_template") {
                // an instruction-tuned Gemma: its turns are not ChatML, and a base model's plain
                // prompts would be the wrong input for it
                return Err(invalid(
                    "this SentencePiece GGUF has a chat template; kvbench runs such models only as base models \
                     (no tokenizer.chat_template), with plain-completion prompts"
                        .into(),
                ));
            }
            return Ok(Self {
                inner: Inner::Spm(Box::new(spm)),
                template: Template::Plain,
                vocab_size,
                bos,
                eos,
                im_start: None,
                im_end: None,
                end_of_text: end_of_turn,
            });
        }
        let pre = gguf.get_str("tokenizer.ggml.pre")?;
        if (model, pre) != ("gpt2", "smollm") {
            return Err(TokenizerError::Unsupported { model: model.into(), pre: pre.into() });
        }
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let token_types = gguf.get_i32_array("tokenizer.ggml.token_type")?;
        if token_types.len() != tokens.len() {
            return Err(invalid(format!("{} token types for {} tokens", token_types.len(), tokens.len())));
        }
        let vocab: Vocab = tokens.iter().zip(0u32..).map(|(t, id)| (t.to_string(), id)).collect();
        if vocab.len() != tokens.len() {
            return Err(invalid("the vocabulary has duplicate tokens".into()));
        }
        let merges = gguf
            .get_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| invalid(format!("merge {m:?} is not two space-separated tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id_of = |text: &str| vocab.get(text).copied();
        let special_id = |key: &str| -> Result<u32, TokenizerError> {
            let id = gguf.get_u32(key)?;
            if (id as usize) < tokens.len() {
                Ok(id)
            } else {
                Err(invalid(format!("{key} = {id} is outside the vocabulary")))
            }
        };
        let required = |text: &str| id_of(text).ok_or_else(|| invalid(format!("no {text} token")));
        let (bos, eos) = (special_id("tokenizer.ggml.bos_token_id")?, special_id("tokenizer.ggml.eos_token_id")?);
        let (im_start, im_end) = (required("<|im_start|>")?, required("<|im_end|>")?);
        let end_of_text = id_of("<|endoftext|>");

        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(TokenizerError::Build)?;
        let digits = Split::new(SplitPattern::Regex(r"\p{N}".into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(TokenizerError::Build)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(Sequence::new(vec![digits.into(), ByteLevel::new(false, false, true).into()])))
            .with_decoder(Some(ByteLevel::default()));
        let literal: Vec<AddedToken> = tokens
            .iter()
            .zip(&token_types)
            .filter(|(_, ty)| LITERAL_TOKEN_TYPES.contains(ty))
            .map(|(text, _)| AddedToken::from(*text, true))
            .collect();
        inner.add_special_tokens(&literal);

        // ChatML where the GGUF's template is ChatML (SmolLM2-Instruct's), plain completion where
        // it has none (a base model); any other template is refused rather than misapplied
        let template = if !gguf.has("tokenizer.chat_template") {
            Template::Plain
        } else if gguf.get_str("tokenizer.chat_template")?.contains("<|im_start|>") {
            Template::ChatMl
        } else {
            return Err(invalid(
                "the GGUF's chat template is not ChatML: kvbench formats prompts as ChatML or, for a base \
                 model without a chat template, as plain text"
                    .into(),
            ));
        };
        Ok(Self {
            inner: Inner::Bpe(Box::new(inner)),
            template,
            vocab_size: tokens.len(),
            bos,
            eos,
            im_start: Some(im_start),
            im_end: Some(im_end),
            end_of_text,
        })
    }

    /// Encodes `text` as llama.cpp does with special tokens parsed: BOS first where the GGUF
    /// says to add it (Gemma's does; SmolLM2's does not), and special tokens such as
    /// `<|im_start|>` written in `text` as their single ids.
    ///
    /// Bytes that have no symbol in SmolLM2's vocabulary (it lacks six ASCII
    /// control characters, e.g. 0x04) are dropped, exactly as llama.cpp does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.inner {
            Inner::Bpe(bpe) => Ok(bpe.encode_fast(text, false).map_err(TokenizerError::Encode)?.get_ids().to_vec()),
            Inner::Spm(spm) => Ok(spm.encode(text)),
        }
    }

    /// Encodes `text` that continues an already encoded prompt: as [`Self::encode`], but never
    /// with a BOS in front.
    pub fn encode_more(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.inner {
            Inner::Bpe(_) => self.encode(text),
            Inner::Spm(spm) => Ok(spm.encode_pieces(text)),
        }
    }

    /// Decodes `ids` back to text: SmolLM2's keeps the text of special tokens; Gemma's drops
    /// control tokens, as llama.cpp renders them. Byte
    /// sequences that are not valid UTF-8 (e.g. half of a multi-byte
    /// character) decode to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId { id, vocab_size: self.vocab_size });
        }
        match &self.inner {
            Inner::Bpe(bpe) => bpe.decode(ids, false).map_err(TokenizerError::Decode),
            Inner::Spm(spm) => spm.decode(ids),
        }
    }

    /// How task prompts wrap the user's text for this model.
    pub fn template(&self) -> Template {
        self.template
    }

    /// The end-of-sequence id (`tokenizer.ggml.eos_token_id`).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The beginning-of-sequence id (`tokenizer.ggml.bos_token_id`), which
    /// [`encode`](Self::encode) adds where the GGUF says so.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// The id of `<|im_start|>` (a ChatML vocabulary's).
    pub fn im_start_id(&self) -> Option<u32> {
        self.im_start
    }

    /// The id of `<|im_end|>` (a ChatML vocabulary's).
    pub fn im_end_id(&self) -> Option<u32> {
        self.im_end
    }

    /// Number of tokens in the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether generation should stop at `id`: EOS, `<|im_end|>` or
    /// `<|endoftext|>` (llama.cpp treats all three as end of generation), or
    /// Gemma's `<end_of_turn>`.
    pub fn is_stop(&self, id: u32) -> bool {
        id == self.eos || Some(id) == self.im_end || Some(id) == self.end_of_text
    }
}

/// The system prompt SmolLM2's chat template inserts when the conversation
/// does not start with a system message.
pub const DEFAULT_SYSTEM_PROMPT: &str = default_system_prompt!();

/// Formats one user turn in ChatML exactly as the model's
/// `tokenizer.chat_template` renders it with `add_generation_prompt`:
/// `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
///
/// When `system` is `None` the template's own default,
/// [`DEFAULT_SYSTEM_PROMPT`], is used, as the template does.
pub fn chatml(system: Option<&str>, user: &str) -> String {
    let system = system.unwrap_or(DEFAULT_SYSTEM_PROMPT);
    format!("<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
}

fn invalid(what: String) -> TokenizerError {
    TokenizerError::Invalid(what)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::gguf::tests::{Kv, build, put_str, str_array};

    /// GPT-2's byte-level symbol for byte `b`: printable Latin-1 bytes stand
    /// for themselves, the other 68 map in order to U+0100 onwards.
    fn byte_symbol(b: u8) -> String {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
        let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
        let c = if printable(b) { char::from(b) } else { char::from_u32(0x100 + rank).unwrap() };
        c.to_string()
    }

    fn str_kv(key: &'static str, value: &str) -> Kv {
        let mut v = Vec::new();
        put_str(&mut v, value);
        (key, 8, v)
    }

    /// A GGUF holding only a tiny tokenizer: 3 control tokens, the 256 byte
    /// symbols, then `he`, `ll`, `hell`, `hello` and `12`.
    fn tiny_gguf(pre: &str, eos: u32) -> GgufFile {
        let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).into();
        tokens.extend((0..=255).map(byte_symbol));
        tokens.extend(["he", "ll", "hell", "hello", "12"].map(String::from));
        let mut types = 5u32.to_le_bytes().to_vec();
        types.extend((tokens.len() as u64).to_le_bytes());
        for i in 0..tokens.len() {
            types.extend(if i < 3 { 3i32 } else { 1 }.to_le_bytes());
        }
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let kvs = [
            str_kv("tokenizer.ggml.model", "gpt2"),
            str_kv("tokenizer.ggml.pre", pre),
            ("tokenizer.ggml.tokens", 9, str_array(&tokens)),
            ("tokenizer.ggml.token_type", 9, types),
            ("tokenizer.ggml.merges", 9, str_array(&["h e", "l l", "he ll", "hell o", "1 2"])),
            ("tokenizer.ggml.bos_token_id", 4, 1u32.to_le_bytes().to_vec()),
            ("tokenizer.ggml.eos_token_id", 4, eos.to_le_bytes().to_vec()),
        ];
        GgufFile::from_bytes(PathBuf::from("tiny.gguf"), build(&kvs, &[], &[])).unwrap()
    }

    #[test]
    fn tiny_vocabulary() {
        let tok = Tokenizer::from_gguf(&tiny_gguf("smollm", 2)).unwrap();
        // Token ids: byte b is 3 + b, "hello" is 3 + 256 + 3.
        let (hello, space) = (262, 3 + 0x20);
        // " hello" is pre-tokenized as one piece "Ġhello"; there is no "Ġhello"
        // merge, so it ends as "Ġ" + "hello".
        assert_eq!(tok.decode(&[space]).unwrap(), " ");
        assert_eq!(tok.encode("hello hello").unwrap(), [hello, space, hello]);
        // Digits are split before BPE, so the "1 2" merge never applies.
        assert_eq!(tok.encode("12").unwrap(), [3 + 0x31, 3 + 0x32]);
        assert_eq!(tok.encode("<|im_start|>hello<|im_end|>").unwrap(), [1, hello, 2]);
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.vocab_size()), (1, 2, 264));
        assert!(tok.is_stop(0) && tok.is_stop(2) && !tok.is_stop(1));
        assert!(matches!(tok.decode(&[264]), Err(TokenizerError::UnknownId { id: 264, .. })));
    }

    #[test]
    fn tiny_vocabulary_errors() {
        let err = Tokenizer::from_gguf(&tiny_gguf("llama3", 2)).unwrap_err();
        assert!(matches!(err, TokenizerError::Unsupported { .. }), "{err:?}");
        let err = Tokenizer::from_gguf(&tiny_gguf("smollm", 9999)).unwrap_err();
        assert!(matches!(err, TokenizerError::Invalid(_)), "{err:?}");
        let empty = GgufFile::from_bytes(PathBuf::from("empty.gguf"), build(&[], &[], &[])).unwrap();
        let err = Tokenizer::from_gguf(&empty).unwrap_err();
        assert!(err.to_string().contains("empty.gguf"), "{err}");
    }

    #[test]
    fn chatml_matches_the_chat_template() {
        assert_eq!(
            chatml(Some("Be brief."), "Hi"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(chatml(None, "Hi").starts_with(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        ));
    }

    fn real_tokenizer() -> Tokenizer {
        let path = crate::assets::smollm2_gguf().unwrap_or_else(|e| panic!("{e}"));
        let gguf = GgufFile::open(&path).unwrap();
        assert!(gguf.get_str("tokenizer.chat_template").unwrap().contains(DEFAULT_SYSTEM_PROMPT));
        Tokenizer::from_gguf(&gguf).unwrap()
    }

    /// Ids produced by llama.cpp (llama-cpp-python 0.3.36,
    /// `Llama(vocab_only=True).tokenize(text.encode(), add_bos=False, special=True)`).
    const LLAMA_CPP: &[(&str, &[u32])] = &[
        ("Hello, world!", &[19556, 28, 905, 17]),
        (
            "In 2024, 3.14159 and 1,000,000",
            &[
                788, 216, 34, 32, 34, 36, 28, 216, 35, 30, 33, 36, 33, 37, 41, 284, 216, 33, 28, 32, 32, 32, 28, 32,
                32, 32,
            ],
        ),
        ("  leading spaces", &[216, 2899, 5600]),
        ("multiple    spaces   here", &[30404, 333, 5600, 256, 1535]),
        ("line one\n\nline two\n", &[1311, 582, 198, 198, 1311, 827, 198]),
        ("tab\tseparated\tvalues\t\t", &[15999, 197, 19509, 483, 197, 6347, 1656]),
        ("don't stop, I'M sure they'll've it's", &[12420, 982, 2853, 28, 339, 23, 61, 2090, 502, 3060, 3543, 357, 506]),
        ("café résumé naïve é", &[83, 1939, 2756, 412, 2756, 5422, 2756, 15486, 46494, 26411]),
        (
            "中文测试，你好世界",
            &[28589, 29184, 43222, 229, 16313, 239, 12831, 18645, 250, 48392, 138, 7906, 240, 178, 239, 230],
        ),
        ("emoji 😀🎉 👍🏽 done", &[391, 33777, 40303, 218, 10813, 232, 227, 15107, 235, 231, 10813, 233, 138, 2294]),
        (
            "fn main() {\n    println!(\"{}\", x + 1);\n}",
            &[7853, 1085, 1000, 1662, 472, 1628, 34115, 17, 43331, 1002, 1792, 1232, 216, 33, 4258, 198, 109],
        ),
        (
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
            &[1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198],
        ),
        ("   \n\t  \n", &[333, 3354, 32057]),
        (
            "ＡＢＣ full-width ①②③ ½ Ⅻ ٣",
            &[
                8083, 111, 8083, 112, 8083, 113, 2073, 29, 6930, 216, 173, 235, 250, 173, 235, 111, 173, 235, 112, 216,
                16738, 216, 173, 223, 121, 216, 164, 113,
            ],
        ),
        ("Ends with space ", &[53, 11035, 351, 1898, 216]),
        ("x<|im_end|>y<|endoftext|>z", &[104, 2, 105, 0, 106]),
        ("a\r\nb", &[81, 201, 198, 82]),
        ("The quick brown fox jumps over the lazy dog.", &[504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30]),
        ("ctrl\u{4}\u{13}x\u{1d} end", &[39673, 104, 1112]),
    ];

    #[test]
    fn matches_llama_cpp() {
        let tok = real_tokenizer();
        for &(text, expected) in LLAMA_CPP {
            assert_eq!(tok.encode(text).unwrap(), expected, "{text:?}");
        }
    }

    #[test]
    fn real_round_trips_and_special_tokens() {
        let tok = real_tokenizer();
        assert_eq!((tok.bos_id(), tok.eos_id(), tok.vocab_size()), (1, 2, 49152));
        for text in [
            "plain ASCII text.",
            "12345",
            "a  b   c    \t\t  end  ",
            "\n\nx\n\n\n",
            "é 中文 😀🎉",
            "fn f(x: &[u8]) -> u8 { x[0] }",
            "",
        ] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text, "{ids:?}");
        }
        for (special, id) in [("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2), ("<empty_output>", 16)] {
            assert_eq!(tok.encode(special).unwrap(), [id]);
            assert_eq!(tok.decode(&[id]).unwrap(), special);
        }
        assert_eq!((tok.im_start_id(), tok.im_end_id()), (Some(1), Some(2)));
        assert!(tok.is_stop(0) && tok.is_stop(2) && !tok.is_stop(1) && !tok.is_stop(3));
        let prompt = chatml(None, "What is 2+2?");
        let ids = tok.encode(&prompt).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 3);
        assert_eq!(tok.decode(&ids).unwrap(), prompt);
    }
}
