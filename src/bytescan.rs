//! Finding bytes eight at a time: MIME text (base64 in responses, the mail in documents) is
//! nearly all of what we scan, and the bytes we look for are rare in it.

const ONES: u64 = 0x0101_0101_0101_0101;
const LOWS: u64 = 0x7F7F_7F7F_7F7F_7F7F;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// `byte` in every byte of a word.
pub const fn splat(byte: u8) -> u64 {
    ONES * byte as u64
}

/// The high bit of each byte of `word` that is zero. Exact: the addition cannot carry from
/// one byte into the next.
pub const fn zero_bytes(word: u64) -> u64 {
    !(((word & LOWS) + LOWS) | word) & HIGHS
}

/// The high bit of each byte of `word` below 0x20 (exact, as in [`zero_bytes`]).
pub const fn control_bytes(word: u64) -> u64 {
    !(((word & LOWS) + splat(0x60)) | word) & HIGHS
}

/// Position of the first byte at or after `from` that `is_match` accepts. `word_matches`
/// must mark exactly those bytes of a little-endian word with their high bit (built from
/// [`zero_bytes`], [`control_bytes`] and [`splat`]); the last few bytes use `is_match`.
pub fn find_first(
    bytes: &[u8],
    from: usize,
    word_matches: impl Fn(u64) -> u64,
    is_match: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut i = from;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let mask = word_matches(u64::from_le_bytes(word));
        if mask != 0 {
            return Some(i + (mask.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    let tail = bytes.get(i..).unwrap_or_default();
    tail.iter().position(|&b| is_match(b)).map(|p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_masks_mark_exactly_the_matching_bytes() {
        for b in 0..=255u8 {
            let word = u64::from_le_bytes([b'A', b, b'A', 0xFF, b'A', b'A', b'A', b'A']);
            let at = |mask: u64| mask & (0x80 << 8) != 0;
            assert_eq!(at(zero_bytes(word)), b == 0, "{b:#x}");
            assert_eq!(at(zero_bytes(word ^ splat(b'<'))), b == b'<', "{b:#x}");
            assert_eq!(at(control_bytes(word)), b < 0x20, "{b:#x}");
        }
    }

    #[test]
    fn finds_the_first_match_at_any_offset_and_start() {
        let is_lt = |b: u8| b == b'<';
        let word_lt = |w: u64| zero_bytes(w ^ splat(b'<'));
        for len in 0..40 {
            for at in 0..len {
                let mut hay = vec![b'A'; len];
                hay[at] = b'<';
                assert_eq!(find_first(&hay, 0, word_lt, is_lt), Some(at), "{len} {at}");
                assert_eq!(find_first(&hay, at, word_lt, is_lt), Some(at));
                assert_eq!(find_first(&hay, at + 1, word_lt, is_lt), None);
            }
        }
        assert_eq!(find_first(b"", 5, word_lt, is_lt), None);
    }
}
