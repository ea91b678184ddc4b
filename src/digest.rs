//! Short SHA-256 hex digests for stable ids and names (email ids without a Message-ID, batch
//! file names, Communications Mining state keys).
//!
//! Pure Rust on purpose: OpenSSL initialises itself on first use (configuration, providers),
//! which costs a few megabytes of memory that a plain-HTTP endpoint otherwise never pays.

use sha2::{Digest, Sha256};

/// Lower-case hex of the first `bytes` bytes (at most 32) of SHA-256 over `input`.
pub fn sha256_hex(input: &[u8], bytes: usize) -> String {
    let digest = Sha256::digest(input);
    let mut out = String::with_capacity(2 * bytes);
    for b in &digest[..bytes.min(digest.len())] {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xF), 16).unwrap_or('0'));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_digest() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex(b"abc", 32),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(sha256_hex(b"abc", 8), "ba7816bf8f01cfea");
        assert_eq!(
            sha256_hex(b"", 4),
            openssl::sha::sha256(b"")[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
}
