//! Byte-level mutations, for any input: bit flips, interesting integers at random offsets (u8,
//! u16, u32 and u64, little- and big-endian), small arithmetic, inserted, deleted and duplicated
//! ranges, splices with another corpus entry, truncation.

use super::rng::Rng;

/// Integers that sit on boundaries readers get wrong.
pub const INTERESTING: [u64; 22] = [
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    16,
    32,
    64,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    1 << 31,
    0xffff_ffff,
    1 << 32,
    1 << 53,
    1 << 63,
    u64::MAX,
];

/// An interesting integer, or one next to it.
pub fn interesting(rng: &mut Rng) -> u64 {
    let x = *rng.pick(&INTERESTING);
    match rng.below(4) {
        0 => x.wrapping_add(1),
        1 => x.wrapping_sub(1),
        _ => x,
    }
}

/// Apply 1 to 8 byte-level mutations to `data` (at most `max_len` bytes after each);
/// `other` is another corpus entry, for splicing.
pub fn bytes(data: &mut Vec<u8>, rng: &mut Rng, other: &[u8], max_len: usize) {
    for _ in 0..rng.small_len(8) {
        once(data, rng, other);
        data.truncate(max_len);
    }
}

/// One byte-level mutation.
pub fn once(data: &mut Vec<u8>, rng: &mut Rng, other: &[u8]) {
    let len = data.len();
    match rng.below(14) {
        0 | 1 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        2 if len > 0 => {
            let at = rng.below(len);
            data[at] = rng.next_u64() as u8;
        }
        3..=5 => {
            // an interesting integer over (or, at the end, past) the bytes at a random offset
            let width = *rng.pick(&[1usize, 2, 4, 4, 8, 8]);
            let x = interesting(rng);
            let bytes = if rng.chance(1, 6) { x.to_be_bytes() } else { x.to_le_bytes() };
            let bytes: &[u8] = if rng.chance(1, 6) { &bytes[8 - width..] } else { &bytes[..width] };
            let at = if len >= width { rng.below(len - width + 1) } else { 0 };
            if at + width > data.len() {
                data.resize(at + width, 0);
            }
            data[at..at + width].copy_from_slice(bytes);
        }
        6 if len >= 4 => {
            // small arithmetic on a u32 or u64 field
            let width = if rng.chance(1, 2) { 4 } else { 8.min(len) };
            let at = rng.below(len - width + 1);
            let mut field = [0u8; 8];
            field[..width].copy_from_slice(&data[at..at + width]);
            let delta = rng.small_len(64) as u64;
            let x = u64::from_le_bytes(field);
            let x = if rng.chance(1, 2) { x.wrapping_add(delta) } else { x.wrapping_sub(delta) };
            data[at..at + width].copy_from_slice(&x.to_le_bytes()[..width]);
        }
        7 => {
            // insert random bytes, or a run of one byte
            let at = rng.below(len + 1);
            let n = rng.small_len(64);
            let fill: Vec<u8> = if rng.chance(1, 2) {
                (0..n).map(|_| rng.next_u64() as u8).collect()
            } else {
                vec![rng.next_u64() as u8; n]
            };
            data.splice(at..at, fill);
        }
        8 if len > 0 => {
            let at = rng.below(len);
            let n = rng.small_len(len - at);
            data.drain(at..at + n);
        }
        9 if len > 0 => {
            // duplicate a range of the input somewhere else in it
            let from = rng.below(len);
            let n = rng.small_len(len - from);
            let chunk = data[from..from + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, chunk);
        }
        10 if !other.is_empty() => {
            // splice: our head, the other entry's tail
            let cut = rng.below(len + 1);
            let from = rng.below(other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        11 if !other.is_empty() && len > 0 => {
            // overwrite with a range of the other entry
            let from = rng.below(other.len());
            let n = rng.small_len(other.len() - from);
            let at = rng.below(len);
            let n = n.min(len - at);
            data[at..at + n].copy_from_slice(&other[from..from + n]);
        }
        12 if len > 0 => data.truncate(rng.below(len)),
        _ if len > 0 => {
            // swap two bytes
            let (a, b) = (rng.below(len), rng.below(len));
            data.swap(a, b);
        }
        _ => data.push(rng.next_u64() as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_limit_and_change_inputs() {
        let mut rng = Rng::new(3);
        let seed: Vec<u8> = (0..100).collect();
        let mut changed = 0;
        for _ in 0..5000 {
            let mut data = seed.clone();
            bytes(&mut data, &mut rng, b"other entry", 150);
            assert!(data.len() <= 150);
            changed += usize::from(data != seed);
        }
        assert!(changed > 4500, "{changed}");
        // an empty input grows
        let mut empty = Vec::new();
        for _ in 0..20 {
            once(&mut empty, &mut rng, b"");
        }
        assert!(!empty.is_empty());
    }
}
