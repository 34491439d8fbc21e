//! The task metrics, as LongBench v1 (`LongBench/metrics.py`, `eval.py`) and the reference study
//! define them, ported line by line so that scores mean what they mean there.
//!
//! - [`normalize_answer`] + [`qa_f1`]: SQuAD-style normalisation (lower case, ASCII punctuation
//!   removed, the articles a/an/the removed, whitespace collapsed), then bag-of-tokens F1.
//! - [`rouge_l`]: the `rouge` package (pltrdy, 1.0.1) "rouge-l" F score that LongBench calls:
//!   sentences split at `.`, *summary-level* union LCS over **distinct** words (`exclusive=True`),
//!   `f = 2pr / (p + r + 1e-8)`; an empty hypothesis is 0 (LongBench catches the exception).
//! - [`rouge_l_content`]: ROUGE-L F1 over content words, kvbench's summarization score (not
//!   LongBench's): lower case, words are runs of letters and digits, [`STOP_WORDS`] (NLTK's
//!   English list) removed, then Lin's sentence-level ROUGE-L, `f = 2pr / (p + r)` with
//!   `p = lcs / len(hypothesis)`, `r = lcs / len(reference)` over the word sequences. It is
//!   ROUGE-1.5.5's `-s` idea (stop words removed) with NLTK's list in place of SMART's. Why: under
//!   [`rouge_l`] a content-free sentence ("The article asked for a one-sentence summary of the last
//!   article, which was a story about ...") scores 10.6 against XSum's references, as much as the
//!   article's own first sentence (11.6) and more than another article's reference summary (8.6),
//!   so function words set a floor near the best this model reaches; over content words the same
//!   three score 0.6, 8.6 and 0.7 (all 1,001 XSum items; docs/TASKS.md).
//! - [`classification`]: LongBench's `classification_score`, including its Python quirk of
//!   removing items from the list it iterates over.
//! - [`retrieval`]: LongBench's `retrieval_score` (the share of numbers in the answer that are the
//!   gold paragraph's number).
//! - [`label_of`] and [`label_match`]: the class a prediction names (the first word of its first
//!   line that is a class name, case-insensitive, singular or plural alike), and whether it is the
//!   gold one; [`cohen_kappa`] corrects the resulting accuracy for chance. Not LongBench's rule
//!   ([`classification`], a case-sensitive substring match, scores "Human" 0 against "Humans").
//! - [`code_sim`]: LongBench's `code_sim_score` with a first-line rule for Rust
//!   ([`first_code_line`]): LongBench skips lines containing `` ` ``, `#` or `//`, which is
//!   Python's comment rule and on Rust skips attributes (`#[inline]`), so an answer that starts
//!   with one was scored on whatever line came next. The scored line is compared with
//!   fuzzywuzzy's `fuzz.ratio`, which (without python-Levenshtein, as LongBench installs it) is
//!   difflib's `SequenceMatcher` ratio rounded to a whole percent ([`fuzz_ratio`]). Both lines
//!   are trimmed first, so indentation, which the chat template makes arbitrary, does not count.
//! - [`needle_exact`] and [`needle_partial`]: the study's needle scores: the key is a substring of
//!   the answer; the longest common substring of key and answer over the key's length.
//! - [`match_all`]: RULER's `string_match_all`, the share of gold values found (case-insensitive)
//!   in the answer, for the synthetic multi-key and multi-value tasks.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// LongBench's `normalize_answer`: lower case, drop ASCII punctuation, drop the words a/an/the,
/// collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    // `re.sub(r'\b(a|an|the)\b', ' ', text)`: the alternatives are all word characters, so a match
    // is exactly a whole maximal run of word characters.
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(no_punc.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if matches!(run.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in no_punc.chars() {
        if word(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// LongBench's `qa_f1_score`: token F1 of the normalised answers.
pub fn qa_f1(prediction: &str, gold: &str) -> f64 {
    let pred = normalize_answer(prediction);
    let gold = normalize_answer(gold);
    let pred: Vec<&str> = pred.split_whitespace().collect();
    let gold: Vec<&str> = gold.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &gold {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in &pred {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// pltrdy `rouge` 1.0.1 `Rouge().get_scores(pred, gold)["rouge-l"]["f"]`, as LongBench's
/// `rouge_score` (no normalisation; case-sensitive); 0 where the package raises.
pub fn rouge_l(prediction: &str, gold: &str) -> f64 {
    let sentences = |text: &str| -> Vec<Vec<String>> {
        text.split('.')
            .filter(|s| !s.is_empty())
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ").split(' ').map(String::from).collect())
            .collect()
    };
    let hyp = sentences(prediction);
    let refs = sentences(gold);
    if hyp.is_empty() || refs.is_empty() {
        return 0.0;
    }
    let distinct = |ss: &[Vec<String>]| ss.iter().flatten().collect::<HashSet<_>>().len();
    let (m, n) = (distinct(&refs), distinct(&hyp));
    let mut union: HashSet<&str> = HashSet::new();
    for r in &refs {
        for h in &hyp {
            union.extend(recon_lcs(r, h));
        }
    }
    let llcs = union.len() as f64;
    let (r, p) = (llcs / m as f64, llcs / n as f64);
    2.0 * (p * r / (p + r + 1e-8))
}

/// NLTK's English stop words (`nltk.corpus.stopwords.words("english")`, its original 127-word
/// list; `s`, `t` and `don` are what its tokenizer leaves of "'s", "'t" and "don't").
#[rustfmt::skip]
pub const STOP_WORDS: [&str; 127] = [
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself", "yourselves",
    "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself", "they", "them", "their",
    "theirs", "themselves", "what", "which", "who", "whom", "this", "that", "these", "those", "am", "is", "are",
    "was", "were", "be", "been", "being", "have", "has", "had", "having", "do", "does", "did", "doing", "a", "an",
    "the", "and", "but", "if", "or", "because", "as", "until", "while", "of", "at", "by", "for", "with", "about",
    "against", "between", "into", "through", "during", "before", "after", "above", "below", "to", "from", "up",
    "down", "in", "out", "on", "off", "over", "under", "again", "further", "then", "once", "here", "there", "when",
    "where", "why", "how", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "no",
    "nor", "not", "only", "own", "same", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don",
    "should", "now",
];

/// The content words of `text`, in order: lower-cased runs of letters and digits that are not
/// [`STOP_WORDS`].
pub fn content_words(text: &str) -> Vec<String> {
    static STOP: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let stop = STOP.get_or_init(|| STOP_WORDS.into_iter().collect());
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && !stop.contains(w))
        .map(String::from)
        .collect()
}

/// ROUGE-L F1 of `prediction` against `gold` over their [`content_words`]; 0 when either has none.
pub fn rouge_l_content(prediction: &str, gold: &str) -> f64 {
    let (hyp, reference) = (content_words(prediction), content_words(gold));
    if hyp.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let lcs = recon_lcs(&reference, &hyp).len() as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (p, r) = (lcs / hyp.len() as f64, lcs / reference.len() as f64);
    2.0 * p * r / (p + r)
}

/// The words of one longest common subsequence of `x` and `y`, chosen with the `rouge`
/// package's tie rule (step back in `x` only when that keeps strictly more).
fn recon_lcs<'a>(x: &'a [String], y: &[String]) -> Vec<&'a str> {
    let (n, m) = (x.len(), y.len());
    let mut table = vec![vec![0u32; m + 1]; n + 1];
    for i in 1..=n {
        for j in 1..=m {
            table[i][j] =
                if x[i - 1] == y[j - 1] { table[i - 1][j - 1] + 1 } else { table[i - 1][j].max(table[i][j - 1]) };
        }
    }
    let (mut i, mut j) = (n, m);
    let mut out = Vec::new();
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            out.push(x[i - 1].as_str());
            i -= 1;
            j -= 1;
        } else if table[i - 1][j] > table[i][j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    out
}

/// LongBench's `classification_score` of one prediction against one gold class.
pub fn classification(prediction: &str, gold: &str, classes: &[String]) -> f64 {
    let mut matched: Vec<&str> = classes.iter().map(String::as_str).filter(|c| prediction.contains(c)).collect();
    // `for t in list: if ...: list.remove(t)` in Python skips the item after each removal.
    let mut i = 0;
    while i < matched.len() {
        let term = matched[i];
        if gold.contains(term) && term != gold {
            let first = matched.iter().position(|&t| t == term).expect("present");
            matched.remove(first);
        }
        i += 1;
    }
    if matched.contains(&gold) { 1.0 / matched.len() as f64 } else { 0.0 }
}

/// The class a prediction names: the first word of its first line (leading newlines skipped)
/// that is one of `classes`, compared case-insensitively and singular or plural alike (a final
/// "s" or "ies" against "y" dropped on both sides: "human" and "HUMANS" are "Humans"). Words are
/// runs of letters. `None` if no word is a class.
pub fn label_of<'a>(prediction: &str, classes: &'a [String]) -> Option<&'a str> {
    let stem = |w: &str| {
        let w = w.to_lowercase();
        if let Some(s) = w.strip_suffix("ies") {
            format!("{s}y")
        } else {
            w.strip_suffix('s').map(str::to_string).unwrap_or(w)
        }
    };
    let stems: Vec<String> = classes.iter().map(|c| stem(c)).collect();
    let first = prediction.trim_start_matches('\n').split('\n').next().unwrap_or("");
    first.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()).find_map(|w| {
        let w = stem(w);
        stems.iter().position(|s| *s == w).map(|i| classes[i].as_str())
    })
}

/// 1 when the prediction names ([`label_of`]) the gold class, else 0.
pub fn label_match(prediction: &str, gold: &str, classes: &[String]) -> f64 {
    if label_of(prediction, classes) == Some(gold) { 1.0 } else { 0.0 }
}

/// Cohen's kappa of (gold, predicted) class pairs and the half-width of its 95% interval.
///
/// `kappa = (p_o - p_e) / (1 - p_e)`: `p_o` is the share of pairs that agree, `p_e` the agreement
/// expected by chance from the two marginals, the sum over classes of (share of golds in the
/// class) x (share of predictions in it); a prediction of no class (`None`) is a class of its
/// own, which no gold is. Half-width: `1.96 * sqrt(p_o (1 - p_o) / n) / (1 - p_e)`, Cohen's
/// (1960) large-sample standard error. `(0, 0)` for no pairs, and kappa is 0 where `p_e` is 1.
pub fn cohen_kappa(pairs: &[(&str, Option<&str>)]) -> (f64, f64) {
    let n = pairs.len() as f64;
    if pairs.is_empty() {
        return (0.0, 0.0);
    }
    let p_o = pairs.iter().filter(|(g, p)| Some(*g) == *p).count() as f64 / n;
    let mut gold: HashMap<&str, f64> = HashMap::new();
    let mut pred: HashMap<&str, f64> = HashMap::new();
    for &(g, p) in pairs {
        *gold.entry(g).or_default() += 1.0 / n;
        if let Some(p) = p {
            *pred.entry(p).or_default() += 1.0 / n;
        }
    }
    let p_e: f64 = gold.iter().map(|(c, g)| g * pred.get(c).copied().unwrap_or(0.0)).sum();
    if p_e >= 1.0 {
        return (0.0, 0.0);
    }
    ((p_o - p_e) / (1.0 - p_e), 1.96 * (p_o * (1.0 - p_o) / n).sqrt() / (1.0 - p_e))
}

/// LongBench's `retrieval_score`: `gold` holds `Paragraph N`; the share of the numbers in the
/// prediction that equal N (0 when there are none).
pub fn retrieval(prediction: &str, gold: &str) -> f64 {
    let Some(id) =
        gold.split("Paragraph ").nth(1).map(|s| s.chars().take_while(char::is_ascii_digit).collect::<String>())
    else {
        return 0.0;
    };
    let numbers = digit_runs(prediction);
    if numbers.is_empty() {
        return 0.0;
    }
    numbers.iter().filter(|n| **n == id).count() as f64 / numbers.len() as f64
}

/// Maximal runs of ASCII digits (`re.findall(r"\d+", ...)` on ASCII text).
fn digit_runs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            run.push(c);
        } else if !run.is_empty() {
            out.push(std::mem::take(&mut run));
        }
    }
    out
}

/// LongBench's `code_sim_score` on Rust: the edit similarity ([`fuzz_ratio`]) of the prediction's
/// [`first_code_line`] and the gold line, both trimmed.
pub fn code_sim(prediction: &str, gold: &str) -> f64 {
    f64::from(fuzz_ratio(first_code_line(prediction), gold.trim())) / 100.0
}

/// The first line of a Rust prediction that is code, trimmed ("" if none).
///
/// Skipped: blank lines, line comments (`//`, and so `///` and `//!`), block comments (`/* */`,
/// from a line that starts one to the line that ends it) and Markdown code fences (a line
/// starting with three backticks). Everything else is code and is scored, attributes
/// (`#[inline]`, `#![...]`) included: they are lines a file really has, and a model that writes
/// one where a statement follows has predicted the wrong line. A line of closing brackets only
/// (`}`, `});`) is scored too: it predicts that the block ends, and the task's gold line never
/// is one (`code::is_code_line`), so it scores low, as a wrong prediction should; skipping it
/// would score the line after a wrong guess.
pub fn first_code_line(prediction: &str) -> &str {
    let mut in_block = false;
    for line in prediction.split('\n') {
        let t = line.trim();
        if in_block {
            in_block = !t.contains("*/");
        } else if let Some(rest) = t.strip_prefix("/*") {
            in_block = !rest.contains("*/");
        } else if !t.is_empty() && !t.starts_with("//") && !t.starts_with("```") {
            return t;
        }
    }
    ""
}

/// fuzzywuzzy 0.18 `fuzz.ratio` without python-Levenshtein: equal strings 100, an empty one 0,
/// else `round(100 * SequenceMatcher(None, a, b).ratio())` (Python rounds half to even).
pub fn fuzz_ratio(a: &str, b: &str) -> u32 {
    if a == b {
        return 100;
    }
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let ratio = 2.0 * matching_chars(&a, &b) as f64 / (a.len() + b.len()) as f64;
    (100.0 * ratio).round_ties_even() as u32
}

/// Sum of difflib's `get_matching_blocks` sizes (`isjunk=None`, `autojunk=True`).
fn matching_chars(a: &[char], b: &[char]) -> usize {
    let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
    for (j, &c) in b.iter().enumerate() {
        b2j.entry(c).or_default().push(j);
    }
    if b.len() >= 200 {
        // autojunk: characters more frequent than 1% (+1) of b are "popular" and not indexed.
        let ntest = b.len() / 100 + 1;
        b2j.retain(|_, js| js.len() <= ntest);
    }
    let longest = |alo: usize, ahi: usize, blo: usize, bhi: usize| -> (usize, usize, usize) {
        let (mut besti, mut bestj, mut best) = (alo, blo, 0);
        let mut j2len: HashMap<usize, usize> = HashMap::new();
        for (i, c) in a.iter().enumerate().take(ahi).skip(alo) {
            let mut next: HashMap<usize, usize> = HashMap::new();
            for &j in b2j.get(c).map(Vec::as_slice).unwrap_or(&[]) {
                if j < blo {
                    continue;
                }
                if j >= bhi {
                    break;
                }
                let k = j.checked_sub(1).and_then(|p| j2len.get(&p)).copied().unwrap_or(0) + 1;
                next.insert(j, k);
                if k > best {
                    (besti, bestj, best) = (i + 1 - k, j + 1 - k, k);
                }
            }
            j2len = next;
        }
        // Extend over popular (unindexed, but not junk) characters, as difflib does.
        while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
            (besti, bestj, best) = (besti - 1, bestj - 1, best + 1);
        }
        while besti + best < ahi && bestj + best < bhi && a[besti + best] == b[bestj + best] {
            best += 1;
        }
        (besti, bestj, best)
    };
    let mut total = 0;
    let mut queue = vec![(0, a.len(), 0, b.len())];
    while let Some((alo, ahi, blo, bhi)) = queue.pop() {
        let (i, j, k) = longest(alo, ahi, blo, bhi);
        if k > 0 {
            total += k;
            if alo < i && blo < j {
                queue.push((alo, i, blo, j));
            }
            if i + k < ahi && j + k < bhi {
                queue.push((i + k, ahi, j + k, bhi));
            }
        }
    }
    total
}

/// The study's needle exact match: 1 when `key` is a substring of the prediction.
pub fn needle_exact(prediction: &str, key: &str) -> f64 {
    if prediction.contains(key) { 1.0 } else { 0.0 }
}

/// The study's needle partial match: the longest common substring of prediction and key, over
/// the key's length (in characters).
pub fn needle_partial(prediction: &str, key: &str) -> f64 {
    let p: Vec<char> = prediction.chars().collect();
    let k: Vec<char> = key.chars().collect();
    if k.is_empty() {
        return 0.0;
    }
    let mut best = 0;
    let mut prev = vec![0usize; k.len() + 1];
    for &pc in &p {
        let mut cur = vec![0usize; k.len() + 1];
        for (j, &kc) in k.iter().enumerate() {
            if pc == kc {
                cur[j + 1] = prev[j] + 1;
                best = best.max(cur[j + 1]);
            }
        }
        prev = cur;
    }
    best as f64 / k.len() as f64
}

/// RULER's `string_match_all`: the share of `golds` found, case-insensitively, in the prediction.
pub fn match_all(prediction: &str, golds: &[String]) -> f64 {
    if golds.is_empty() {
        return 0.0;
    }
    let p = prediction.to_lowercase();
    golds.iter().filter(|g| p.contains(&g.to_lowercase())).count() as f64 / golds.len() as f64
}

/// Mean and the half-width of its 95% confidence interval (normal approximation,
/// `1.96 * s / sqrt(n)` with the sample standard deviation; 0 for fewer than two values).
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, 1.96 * (var / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn normalize_drops_case_punctuation_articles_and_spaces() {
        assert_eq!(normalize_answer("The  Cat's hat, an apple!"), "cats hat apple");
        // "A" is an article only as a whole word: "Aa" and "theatre" stay.
        assert_eq!(normalize_answer("A theatre; Aa"), "theatre aa");
        // Non-ASCII punctuation is kept and bounds a word: "the" before "–" is removed.
        assert_eq!(normalize_answer("the–end"), "–end");
    }

    #[test]
    fn qa_f1_hand_worked() {
        // pred "the cat sat on mat" -> [cat sat on mat] (4 tokens); gold "a cat on the mat" ->
        // [cat on mat] (3). Common: cat, on, mat = 3. p = 3/4, r = 3/3 = 1,
        // f1 = 2 * 0.75 * 1 / 1.75 = 0.857142...
        assert!(close(qa_f1("the cat sat on mat", "a cat on the mat"), 1.5 / 1.75));
        // Repeated tokens count with multiplicity: pred [paris paris] vs gold [paris]: same = 1,
        // p = 1/2, r = 1, f1 = 2 * 0.5 / 1.5 = 2/3.
        assert!(close(qa_f1("Paris Paris", "Paris."), 2.0 / 3.0));
        assert_eq!(qa_f1("London", "Paris"), 0.0);
        assert_eq!(qa_f1("", "Paris"), 0.0);
    }

    #[test]
    fn rouge_l_hand_worked() {
        // One sentence each. ref "the cat was on the mat": distinct words {the cat was on mat},
        // m = 5; hyp "the cat sat on the mat": n = 5. LCS = the cat on the mat, distinct words
        // {the cat on mat} = 4. r = 4/5, p = 4/5, f = 2 * 0.64 / 1.6 = 0.8 (minus the 1e-8 term).
        assert!(close(rouge_l("the cat sat on the mat", "the cat was on the mat"), 0.8));
        // Two reference sentences "a b c. d e" (m = 5) and hyp "a c e" (n = 3): LCS with the
        // first is {a, c}, with the second {e}; union 3. r = 3/5, p = 1, f = 2 * 0.6 / 1.6 = 0.75.
        assert!(close(rouge_l("a c e", "a b c. d e"), 0.75));
        // Case-sensitive, no normalisation: "The" != "the". ref "the end" m = 2, hyp "The end"
        // n = 2, LCS {end} = 1, r = p = 1/2, f = 0.5.
        assert!(close(rouge_l("The end", "the end"), 0.5));
        assert_eq!(rouge_l("", "the end"), 0.0);
        assert_eq!(rouge_l("...", "the end"), 0.0);
    }

    #[test]
    fn rouge_l_content_hand_worked() {
        // Content words: ref "cat sat mat" (the, on, the dropped), hyp "cat mat"; LCS 2,
        // p = 2/2, r = 2/3, f = 2 * (2/3) / (5/3) = 0.8.
        assert!(close(rouge_l_content("The cat on the mat.", "The cat sat on the mat"), 0.8));
        // Case, punctuation and repeated words: "NHS," is "nhs"; "UK's" is "uk" (the "s" a stop
        // word). ref [nhs, uk, target], hyp [uk, nhs, nhs]: LCS 1 (order counts), p = 1/3, r = 1/3.
        assert!(close(rouge_l_content("UK's NHS, NHS", "NHS: the UK's target"), 1.0 / 3.0));
        // A sentence of stop words alone scores nothing, where LongBench's ROUGE-L gives it some.
        let gold = "The NHS in England has met its target for the first time since September.";
        assert_eq!(rouge_l_content("It was about the one that is there.", gold), 0.0);
        assert!(rouge_l("It was about the one that is there.", gold) > 0.0);
        assert!(close(rouge_l_content(gold, gold), 1.0));
        assert_eq!(rouge_l_content("", gold), 0.0);
        assert_eq!(rouge_l_content("the of and", gold), 0.0);
        assert_eq!(content_words("Don't stop: 95% A&E"), ["stop", "95", "e"]);
    }

    #[test]
    fn classification_hand_worked() {
        let classes: Vec<String> = ["Humans", "Entity", "Location", "Date"].map(String::from).into();
        // Only "Humans" appears: matched [Humans], gold in it, score 1/1.
        assert_eq!(classification("Humans", "Humans", &classes), 1.0);
        // Two classes appear: matched [Humans, Entity]; score 1/2.
        assert_eq!(classification("Humans or Entity", "Entity", &classes), 0.5);
        assert_eq!(classification("Location", "Date", &classes), 0.0);
        assert_eq!(classification("no idea", "Date", &classes), 0.0);
        // The quirk: classes "ab", "a", "b" with gold "ab" and prediction "ab": matched
        // [ab, a, b]. i=0 "ab" stays (equals gold); i=1 "a" is in gold and removed, so "b"
        // slides to index 1 and is skipped; matched [ab, b], score 1/2 (a clean loop gives 1).
        let quirky: Vec<String> = ["ab", "a", "b"].map(String::from).into();
        assert_eq!(classification("ab", "ab", &quirky), 0.5);
    }

    #[test]
    fn retrieval_hand_worked() {
        // Numbers in the prediction: 3, 12, 3 -> 2 of 3 are the gold 3.
        assert!(close(retrieval("Paragraph 3, not 12; Paragraph 3", "Paragraph 3"), 2.0 / 3.0));
        assert_eq!(retrieval("none", "Paragraph 3"), 0.0);
    }

    #[test]
    fn fuzz_ratio_hand_worked() {
        // "let x = 1;" vs "let y = 2;" (10 chars each): difflib finds "let " (4), then " = " (3),
        // then ";" (1): 8 matching. 2 * 8 / 20 = 0.8 -> 80.
        assert_eq!(fuzz_ratio("let x = 1;", "let y = 2;"), 80);
        // "abcd" vs "bcda": longest block "bcd" (3), nothing left on either side that matches
        // ("a" before vs nothing before). 2 * 3 / 8 = 0.75 -> 75.
        assert_eq!(fuzz_ratio("abcd", "bcda"), 75);
        // "ab" vs "abcdefgh": "ab" matches, 2 * 2 / 10 = 0.4 -> 40. Half-to-even: "a" vs "ab" is
        // 2 * 1 / 3 = 66.67 -> 67.
        assert_eq!(fuzz_ratio("ab", "abcdefgh"), 40);
        assert_eq!(fuzz_ratio("a", "ab"), 67);
        assert_eq!((fuzz_ratio("", ""), fuzz_ratio("", "x")), (100, 0));
    }

    #[test]
    fn code_sim_takes_the_first_rust_code_line() {
        // "```rust" (a fence) and "// next" are skipped, "let y = 2;" is scored: ratio 80
        // against "let x = 1;" as above.
        assert!(close(code_sim("\n```rust\n// next\nlet y = 2;\n```", "    let x = 1;"), 0.8));
        // Doc and inner comments, a block comment over two lines and a blank line are skipped.
        assert_eq!(first_code_line("/// doc\n//! inner\n/* a\n b */\n\n    let x = 1;"), "let x = 1;");
        assert_eq!(first_code_line("/* one line */ \n  x += 1;"), "x += 1;");
        // Attributes are code: scored, not skipped (LongBench's rule skipped any line with '#').
        assert_eq!(first_code_line("    #[inline]\n    fn f() {}"), "#[inline]");
        assert_eq!(first_code_line("#![allow(dead_code)]"), "#![allow(dead_code)]");
        assert_eq!(code_sim("#[inline]\nfn f() {}", "#[inline]"), 1.0);
        // A model that writes "#[inline]" where "fn f() {" follows: difflib's longest block is
        // the first "n" of each (1); left of it "#[i" against "f", right of it "line]" against
        // " f() {" share nothing: 1 matching character, 2 * 1 / 17 = 0.1176 -> 12.
        assert_eq!(fuzz_ratio("#[inline]", "fn f() {"), 12);
        // A closing brace is a prediction that the block ends: scored, and it scores 0 against a
        // gold line with no brace.
        assert_eq!(first_code_line("    }\n    let y = 2;"), "}");
        assert_eq!(code_sim("}\nlet x = 1;", "let x = 1;"), 0.0);
        // Nothing but comments: the empty line, which scores 0.
        assert_eq!(first_code_line("// a\n\n/* b */"), "");
        assert_eq!(code_sim("// let x = 1;", "let x = 1;"), 0.0);
    }

    #[test]
    fn label_of_is_case_and_number_blind() {
        let classes: Vec<String> = ["Humans", "Date", "Quantity", "Location"].map(String::from).into();
        for (prediction, class) in [
            (" Humans", Some("Humans")),
            (" Human\n\nQuestion: Who", Some("Humans")),
            ("HUMANS.", Some("Humans")),
            ("\nlocations", Some("Location")),
            (" Quantities", Some("Quantity")),
            // The first class word counts: "Date" before "Humans".
            (" a Date, not Humans", Some("Date")),
            // Only the first line is read, and a word must be the whole class word.
            (" Entity\nHumans", None),
            (" Dated", None),
            (" Historical Question", None),
        ] {
            assert_eq!(label_of(prediction, &classes), class, "{prediction:?}");
        }
        assert_eq!(label_match(" human", "Humans", &classes), 1.0);
        assert_eq!(label_match(" Date", "Humans", &classes), 0.0);
    }

    #[test]
    fn cohen_kappa_hand_worked() {
        // Golds A A B B, predictions A B B none. p_o = 2/4 = 0.5. Gold shares A 0.5, B 0.5;
        // predicted A 0.25, B 0.5 (none 0.25, which no gold is). p_e = 0.5 * 0.25 + 0.5 * 0.5 =
        // 0.375. kappa = 0.125 / 0.625 = 0.2; half-width 1.96 * sqrt(0.25 / 4) / 0.625 = 0.784.
        let (k, h) = cohen_kappa(&[("A", Some("A")), ("A", Some("B")), ("B", Some("B")), ("B", None)]);
        assert!(close(k, 0.2) && close(h, 0.784), "{k} {h}");
        // Always the same class over balanced golds: p_o = p_e = 1/4, kappa 0.
        let pairs: Vec<(&str, Option<&str>)> = ["A", "B", "C", "D"].iter().map(|&g| (g, Some("A"))).collect();
        assert!(close(cohen_kappa(&pairs).0, 0.0));
        // Perfect agreement: kappa 1, half-width 0.
        assert_eq!(cohen_kappa(&[("A", Some("A")), ("B", Some("B"))]), (1.0, 0.0));
        assert_eq!(cohen_kappa(&[]), (0.0, 0.0));
    }

    #[test]
    fn needle_and_match_all_hand_worked() {
        assert_eq!(needle_exact("The pass key is 4812345.", "4812345"), 1.0);
        assert_eq!(needle_exact("It is 481234", "4812345"), 0.0);
        // Longest common substring of "481234" and "4812345" is "481234": 6 of 7 characters.
        assert!(close(needle_partial("It is 481234", "4812345"), 6.0 / 7.0));
        // "9812" and "4812345": "812" is common, 3/7.
        assert!(close(needle_partial("9812", "4812345"), 3.0 / 7.0));
        let golds = ["123".to_string(), "456".to_string()];
        assert_eq!(match_all("values 123 and 789", &golds), 0.5);
    }

    #[test]
    fn mean_ci95_hand_worked() {
        // 0, 1, 0, 1: mean 0.5, sample variance (4 * 0.25) / 3 = 1/3, se = sqrt(1/12) = 0.288675,
        // half-width 1.96 * 0.288675 = 0.565803.
        let (m, h) = mean_ci95(&[0.0, 1.0, 0.0, 1.0]);
        assert!(close(m, 0.5) && (h - 0.565803).abs() < 1e-5, "{m} {h}");
        assert_eq!(mean_ci95(&[0.3]), (0.3, 0.0));
    }
}
