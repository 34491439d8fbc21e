//! Mutations of a JSON tree (a trace header, a results file): a random node's number to a
//! boundary value, its string to an empty, non-ASCII or very long one, keys deleted, renamed or
//! added, arrays grown or shrunk, a node replaced by one of another type.

use serde_json::{Map, Number, Value};

use super::mutate;
use super::rng::Rng;

/// Numbers on the boundaries of the readers' types.
const NUMBERS: [f64; 14] =
    [0.0, 1.0, -1.0, 2.0, 4294967296.0, 9007199254740992.0, 1e300, -1e300, 0.5, -0.0, 1e-300, 65536.0, 1e19, 255.0];

/// About the most text an array grows by in one mutation.
const GROWTH: usize = 1 << 20;

/// About how long `v` is as JSON text, counted up to `cap`.
fn text_len(v: &Value, cap: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        n += match v {
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a);
                2 + a.len()
            }
            Value::Object(o) => {
                stack.extend(o.values());
                2 + o.keys().map(|k| k.len() + 4).sum::<usize>()
            }
            _ => 8,
        };
        if n > cap {
            break;
        }
    }
    n
}

/// Strings that break assumptions: empty, non-ASCII (a multi-byte character where a slice might
/// cut: byte 16), control characters, separators.
pub fn string(rng: &mut Rng, old: &str) -> String {
    match rng.below(12) {
        0 => String::new(),
        1 => "é".repeat(rng.small_len(64)),
        2 => "A".repeat(rng.small_len(1 << 16)),
        3 => format!("{}é{}", "0".repeat(15), "f".repeat(48)),
        4 => "\0\u{1}\n\t\"\\".into(),
        5 => "../../x".into(),
        6 => " ".into(),
        7 => "::".into(),
        8 => "0123456789abcdef".repeat(4),
        9 => format!("{old}{old}"),
        10 => {
            // cut at a random character
            let n = old.chars().count();
            old.chars().take(rng.below(n + 1)).collect()
        }
        _ => "日本語🦀".repeat(rng.small_len(16)),
    }
}

fn number(rng: &mut Rng, old: Option<&Number>) -> Value {
    let old_u = old.and_then(Number::as_u64);
    match rng.below(6) {
        0 => Value::from(mutate::interesting(rng)),
        1 => Value::from((mutate::interesting(rng) as i64).wrapping_neg()),
        2 => Number::from_f64(*rng.pick(&NUMBERS)).map_or(Value::Null, Value::Number),
        3 if old_u.is_some() => Value::from(old_u.unwrap_or(0).wrapping_add(rng.small_len(16) as u64)),
        4 if old_u.is_some() => Value::from(old_u.unwrap_or(0).saturating_sub(rng.small_len(16) as u64)),
        5 if old_u.is_some() => Value::from(old_u.unwrap_or(0).saturating_mul(1 << rng.below(40))),
        _ => {
            let bits = rng.below(20);
            Value::from(rng.below(1 << bits) as u64)
        }
    }
}

/// A value of a random type.
fn any(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(1, 2)),
        2 => number(rng, None),
        3 => Value::String(string(rng, "x")),
        4 => Value::Array(vec![]),
        _ => Value::Object(Map::new()),
    }
}

/// Mutate `root` once, at a node picked by a random walk down from it.
pub fn mutate(root: &mut Value, rng: &mut Rng) {
    let keys = key_names(root);
    let mut node = root;
    loop {
        let children = match &*node {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        };
        if children == 0 || rng.chance(1, 4) {
            break;
        }
        let i = rng.below(children);
        node = match node {
            Value::Array(a) => &mut a[i],
            Value::Object(o) => o.values_mut().nth(i).expect("in range"),
            _ => unreachable!(),
        };
    }
    if rng.chance(1, 8) {
        *node = any(rng);
        return;
    }
    match node {
        Value::Null => *node = any(rng),
        Value::Bool(b) => *b = !*b,
        Value::Number(n) => *node = number(rng, Some(&*n)),
        Value::String(s) => *s = string(rng, s),
        Value::Array(a) => match rng.below(6) {
            0 if !a.is_empty() => drop(a.remove(rng.below(a.len()))),
            1 if !a.is_empty() => {
                let i = rng.below(a.len());
                let copy = a[i].clone();
                a.insert(i, copy);
            }
            2 if !a.is_empty() => {
                // grow by copies, up to a few hundred elements and about a MiB of text
                let copy = a[rng.below(a.len())].clone();
                let n = rng.small_len(256).min(GROWTH / text_len(&copy, GROWTH).max(1));
                a.extend(std::iter::repeat_n(copy, n));
            }
            3 => a.truncate(rng.below(a.len() + 1)),
            4 if a.len() > 1 => {
                let (i, j) = (rng.below(a.len()), rng.below(a.len()));
                a.swap(i, j);
            }
            _ => a.push(any(rng)),
        },
        Value::Object(o) => match rng.below(4) {
            0 if !o.is_empty() => {
                let key = o.keys().nth(rng.below(o.len())).expect("in range").clone();
                o.remove(&key);
            }
            1 if !o.is_empty() => {
                // rename a key (to another one used in the document, or to junk)
                let key = o.keys().nth(rng.below(o.len())).expect("in range").clone();
                let value = o.remove(&key).expect("present");
                let name =
                    if keys.is_empty() || rng.chance(1, 4) { string(rng, &key) } else { rng.pick(&keys).clone() };
                o.insert(name, value);
            }
            _ => {
                let name = if keys.is_empty() || rng.chance(1, 4) { string(rng, "k") } else { rng.pick(&keys).clone() };
                o.insert(name, any(rng));
            }
        },
    }
}

/// Every object key in `v` (deduplicated, in order of appearance).
fn key_names(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter().take(4)),
            Value::Object(o) => {
                for (k, v) in o {
                    if !out.contains(k) {
                        out.push(k.clone());
                    }
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    out
}

/// `v` as JSON text: compact mostly, sometimes pretty-printed.
pub fn to_bytes(v: &Value, rng: &mut Rng) -> Vec<u8> {
    if rng.chance(1, 8) {
        serde_json::to_vec_pretty(v).expect("a Value serializes")
    } else {
        serde_json::to_vec(v).expect("a Value serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_reach_nested_leaves_and_keep_json_valid() {
        let seed = serde_json::json!({"a": {"b": [1, 2, {"c": "x"}]}, "d": 3.5, "e": true});
        let mut rng = Rng::new(11);
        let mut deep = 0;
        for _ in 0..3000 {
            let mut v = seed.clone();
            mutate(&mut v, &mut rng);
            let text = to_bytes(&v, &mut rng);
            let back: Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(back, v);
            deep += usize::from(v["a"]["b"][2]["c"] != "x" && v["d"] == 3.5);
        }
        assert!(deep > 30, "{deep}");
    }
}
