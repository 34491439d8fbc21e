//! Little-endian byte encoding of plain numbers and slices, for kvbench's own binary files
//! (the prefill cache on disk). Readers return `None` when the input ends early.

/// Append `x`.
pub fn put_u64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_le_bytes());
}

/// Append the length of `xs`, then its values.
pub fn put_f32s(out: &mut Vec<u8>, xs: &[f32]) {
    put_u64(out, xs.len() as u64);
    out.reserve(xs.len() * 4);
    xs.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// Append the length of `xs`, then its values.
pub fn put_f64s(out: &mut Vec<u8>, xs: &[f64]) {
    put_u64(out, xs.len() as u64);
    out.reserve(xs.len() * 8);
    xs.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// Append the length of `xs`, then its values.
pub fn put_u32s(out: &mut Vec<u8>, xs: &[u32]) {
    put_u64(out, xs.len() as u64);
    xs.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// Take `n` bytes.
pub fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

/// Take a `u64`.
pub fn take_u64(input: &mut &[u8]) -> Option<u64> {
    take(input, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Take a `u64` that must fit a `usize`.
pub fn take_usize(input: &mut &[u8]) -> Option<usize> {
    take_u64(input).and_then(|x| usize::try_from(x).ok())
}

/// Take a length-prefixed run of `f32`.
pub fn take_f32s(input: &mut &[u8]) -> Option<Vec<f32>> {
    let n = take_usize(input)?;
    let bytes = take(input, n.checked_mul(4)?)?;
    Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
}

/// Take a length-prefixed run of `f64`.
pub fn take_f64s(input: &mut &[u8]) -> Option<Vec<f64>> {
    let n = take_usize(input)?;
    let bytes = take(input, n.checked_mul(8)?)?;
    Some(bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
}

/// Take a length-prefixed run of `u32`.
pub fn take_u32s(input: &mut &[u8]) -> Option<Vec<u32>> {
    let n = take_usize(input)?;
    let bytes = take(input, n.checked_mul(4)?)?;
    Some(bytes.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_short_input() {
        let mut out = Vec::new();
        put_u64(&mut out, 7);
        put_f32s(&mut out, &[1.5, -0.0, f32::MIN_POSITIVE]);
        put_u32s(&mut out, &[3, u32::MAX]);
        let mut input = &out[..];
        assert_eq!(take_u64(&mut input), Some(7));
        let f = take_f32s(&mut input).unwrap();
        assert_eq!(
            f.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            [1.5f32, -0.0, f32::MIN_POSITIVE].map(f32::to_bits)
        );
        assert_eq!(take_u32s(&mut input), Some(vec![3, u32::MAX]));
        assert!(input.is_empty());
        for cut in 0..out.len() {
            let mut short = &out[8..cut.max(8)];
            let whole = take_f32s(&mut short).is_some() && take_u32s(&mut short).is_some();
            assert!(!whole, "a cut at {cut} of {} bytes read as whole", out.len());
        }
        // a length that overflows is refused, not allocated
        let mut huge = Vec::new();
        put_u64(&mut huge, u64::MAX);
        assert_eq!(take_f32s(&mut &huge[..]), None);
    }
}
