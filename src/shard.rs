//! Which replica syncs which mailbox: rendezvous (highest-random-weight) hashing over shards.
//!
//! Every replica computes, for each mailbox, a weight per shard and takes the shard with the
//! largest weight. Replicas need no coordination, and growing from `n` to `n + 1` shards moves only
//! the mailboxes whose new shard `n` now wins (about `1 / (n + 1)` of them), all to shard `n`.
//!
//! # Definition (stable: changing it reshuffles every mailbox)
//!
//! ```text
//! key          = to_lowercase(mailbox)                     (Unicode lower-casing, UTF-8 bytes)
//! bytes        = key || 0x00 || u32_le(shard_index)
//! h            = FNV-1a 64 over bytes:
//!                  h = 0xcbf29ce484222325
//!                  for b in bytes: h = (h XOR b) * 0x100000001b3   (mod 2^64)
//! weight       = splitmix64 finaliser of h (all mod 2^64):
//!                  h ^= h >> 30; h *= 0xbf58476d1ce4e5b9
//!                  h ^= h >> 27; h *= 0x94d049bb133111eb
//!                  h ^= h >> 31
//! shard_of(mailbox, total) = the index i in 0..total with the largest weight(key, i);
//!                            on equal weights the smaller i wins
//! ```
//!
//! The lower-casing is Unicode's default full mapping (Rust `str::to_lowercase`; Python's
//! `str.lower` gives the same bytes, final sigma included), so `Alice@Example.COM` and
//! `alice@example.com` land together. Addresses are not otherwise normalised: no trimming, no
//! `+tag` removal, no IDNA. The 0x00 separator keeps the address and the index apart, and the
//! finaliser spreads FNV's weak high bits so that the argmax is balanced.
//!
//! # Worked example
//!
//! ```text
//! weight("alice@example.com", 0) = 0xfd2aef17b471db4b   <- the largest of the four
//! weight("alice@example.com", 1) = 0xaa1c6a7e069ee071
//! weight("alice@example.com", 2) = 0x1bc10d88631dec9f
//! weight("alice@example.com", 3) = 0xa7e409955697784f
//! shard_of("alice@example.com", 4) = 0
//! shard_of("Alice@Example.COM", 4) = 0
//! shard_of("bob@example.com", 4)   = 2
//! ```
//!
//! The same in Python 3, for operators checking an assignment by hand:
//!
//! ```python
//! M = 2**64 - 1
//!
//! def weight(key, shard):
//!     h = 0xcbf29ce484222325
//!     for b in key.encode() + b"\0" + shard.to_bytes(4, "little"):
//!         h = ((h ^ b) * 0x100000001b3) & M
//!     h ^= h >> 30; h = (h * 0xbf58476d1ce4e5b9) & M
//!     h ^= h >> 27; h = (h * 0x94d049bb133111eb) & M
//!     return h ^ (h >> 31)
//!
//! def shard_of(mailbox, total):
//!     key = mailbox.lower()
//!     return max(range(total), key=lambda i: (weight(key, i), -i))
//!
//! print([hex(weight("alice@example.com", i)) for i in range(4)])
//! print(shard_of("alice@example.com", 4), shard_of("Alice@Example.COM", 4), shard_of("bob@example.com", 4))
//! ```
//!
//! prints `['0xfd2aef17b471db4b', '0xaa1c6a7e069ee071', '0x1bc10d88631dec9f', '0xa7e409955697784f']`
//! and `0 0 2`.

use std::cmp::Reverse;
use std::fmt;

/// This replica's place among `total` shards, parsed from `--shard-name` (trailing integer:
/// "exchange-sync-3" → 3) and `--total-shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub total: u32,
}

impl Shard {
    /// Parses the trailing decimal digits of `name` as the index, so that a `StatefulSet` pod
    /// name (`exchange-sync-3`) can be passed as it is.
    ///
    /// # Errors
    ///
    /// `total` is 0, `name` does not end in a decimal index, or the index is not below `total`.
    pub fn from_name(name: &str, total: u32) -> Result<Shard, ShardError> {
        if total == 0 {
            return Err(ShardError::ZeroTotal);
        }
        let digits_start = name
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_digit())
            .last()
            .map(|(i, _)| i)
            .ok_or_else(|| ShardError::NoTrailingIndex(name.to_owned()))?;
        let index = name[digits_start..]
            .parse::<u32>()
            .map_err(|_| ShardError::IndexTooLarge(name.to_owned()))?;
        if index >= total {
            return Err(ShardError::IndexOutOfRange {
                name: name.to_owned(),
                index,
                total,
            });
        }
        Ok(Shard { index, total })
    }

    /// The only shard of an unsharded deployment: it owns every mailbox.
    pub fn single() -> Shard {
        Shard { index: 0, total: 1 }
    }

    /// Whether this replica syncs `mailbox` (case-insensitive).
    pub fn owns(&self, mailbox: &str) -> bool {
        shard_of(mailbox, self.total) == self.index
    }
}

/// The shard in `0..total` that owns `mailbox` (case-insensitive); see the module docs.
///
/// `total == 0` has no valid answer; it returns 0 rather than panicking, and [`Shard::from_name`]
/// never builds such a shard.
pub fn shard_of(mailbox: &str, total: u32) -> u32 {
    let key = mailbox.to_lowercase();
    // `Reverse(i)` makes the smaller index the larger key on equal weights.
    (0..total)
        .max_by_key(|&i| (weight(&key, i), Reverse(i)))
        .unwrap_or(0)
}

/// The rendezvous weight of an already lower-cased mailbox on one shard; see the module docs.
pub fn weight(mailbox_lower: &str, shard_index: u32) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = mailbox_lower
        .bytes()
        .chain([0u8])
        .chain(shard_index.to_le_bytes());
    let mut h = FNV_OFFSET;
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[derive(Debug)]
pub enum ShardError {
    /// The shard name does not end in a decimal index.
    NoTrailingIndex(String),
    /// The trailing index does not fit in a u32.
    IndexTooLarge(String),
    /// The index is not below the number of shards.
    IndexOutOfRange {
        name: String,
        index: u32,
        total: u32,
    },
    /// `--total-shards 0`.
    ZeroTotal,
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardError::NoTrailingIndex(name) => write!(
                f,
                "shard name {name:?} does not end in a shard index (expected e.g. \"exchange-sync-3\")"
            ),
            ShardError::IndexTooLarge(name) => {
                write!(
                    f,
                    "the index at the end of shard name {name:?} does not fit in 32 bits"
                )
            }
            ShardError::IndexOutOfRange { name, index, total } => write!(
                f,
                "shard name {name:?} gives index {index}, but --total-shards is {total} \
                 (indexes run from 0 to {})",
                total - 1
            ),
            ShardError::ZeroTotal => write!(f, "--total-shards is 0; it must be at least 1"),
        }
    }
}

impl std::error::Error for ShardError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailboxes() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("user{i}@example.com"))
    }

    #[test]
    fn worked_example_is_pinned() {
        // These are the values in the module docs (and the README): if this test fails, the
        // definition changed and every deployed mailbox would move to another shard.
        let expected = [
            0xfd2a_ef17_b471_db4b,
            0xaa1c_6a7e_069e_e071,
            0x1bc1_0d88_631d_ec9f,
            0xa7e4_0995_5697_784f,
        ];
        for (i, want) in (0..).zip(expected) {
            assert_eq!(weight("alice@example.com", i), want, "weight of shard {i}");
        }
        assert_eq!(shard_of("alice@example.com", 4), 0);
        assert_eq!(shard_of("Alice@Example.COM", 4), 0);
        assert_eq!(shard_of("bob@example.com", 4), 2);
    }

    #[test]
    fn balanced_over_16_shards() {
        let mut counts = [0u32; 16];
        for m in mailboxes() {
            counts[shard_of(&m, 16) as usize] += 1;
        }
        let mean = 10_000.0 / 16.0;
        let largest = f64::from(*counts.iter().max().unwrap());
        assert!(
            largest <= mean * 1.10,
            "largest shard has {largest} mailboxes, mean {mean}: {counts:?}"
        );
    }

    #[test]
    fn growing_16_to_17_moves_only_to_the_new_shard() {
        let mut moved = 0u32;
        for m in mailboxes() {
            let (before, after) = (shard_of(&m, 16), shard_of(&m, 17));
            if before != after {
                assert_eq!(after, 16, "{m} moved from {before} to {after}");
                moved += 1;
            }
        }
        let expected = 10_000.0 / 17.0;
        let moved = f64::from(moved);
        assert!(
            (expected * 0.75..=expected * 1.25).contains(&moved),
            "{moved} mailboxes moved, expected about {expected:.0}"
        );
    }

    #[test]
    fn case_insensitive() {
        for total in 1..=32 {
            assert_eq!(
                shard_of("Alice@Example.COM", total),
                shard_of("alice@example.com", total)
            );
            assert_eq!(
                shard_of("ÄNNE@BEISPIEL.DE", total),
                shard_of("änne@beispiel.de", total)
            );
        }
    }

    #[test]
    fn exactly_one_shard_owns_each_mailbox() {
        for m in mailboxes().take(500) {
            let owners = (0..7)
                .filter(|&index| Shard { index, total: 7 }.owns(&m))
                .count();
            assert_eq!(owners, 1, "{m}");
        }
        assert!(Shard::single().owns("anyone@example.com"));
        assert_eq!(shard_of("anyone@example.com", 1), 0);
    }

    #[test]
    fn from_name_parses_the_trailing_index() {
        assert_eq!(
            Shard::from_name("exchange-sync-3", 4).unwrap(),
            Shard { index: 3, total: 4 }
        );
        assert_eq!(
            Shard::from_name("sync-12", 16).unwrap(),
            Shard {
                index: 12,
                total: 16
            }
        );
        assert_eq!(
            Shard::from_name("7", 8).unwrap(),
            Shard { index: 7, total: 8 }
        );
        assert_eq!(Shard::single(), Shard { index: 0, total: 1 });
    }

    #[test]
    fn from_name_errors_name_the_value() {
        let err = Shard::from_name("exchange-sync", 3).unwrap_err();
        assert!(matches!(err, ShardError::NoTrailingIndex(_)), "{err:?}");
        assert!(err.to_string().contains("\"exchange-sync\""), "{err}");

        let err = Shard::from_name("x-3", 3).unwrap_err();
        assert!(
            matches!(
                err,
                ShardError::IndexOutOfRange {
                    index: 3,
                    total: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("\"x-3\"") && err.to_string().contains("is 3"),
            "{err}"
        );

        let err = Shard::from_name("exchange-sync-0", 0).unwrap_err();
        assert!(matches!(err, ShardError::ZeroTotal), "{err:?}");
        assert!(err.to_string().contains("is 0"), "{err}");

        let err = Shard::from_name("sync-99999999999", 3).unwrap_err();
        assert!(matches!(err, ShardError::IndexTooLarge(_)), "{err:?}");
        assert!(err.to_string().contains("99999999999"), "{err}");
    }
}
