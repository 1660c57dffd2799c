//! Which shard (core) owns a pool: a fixed hash of the pool handle.
//!
//! Every thread, process and registrar must map a handle to the same shard, on every machine
//! and in every version, so the hash is fixed: **XXH3-64 with seed [`SHARD_HASH_SEED`]**
//! (the ASCII bytes "RSERPOOL", big-endian). XXH3 is specified byte for byte, has the same output
//! on every CPU (unlike `ahash`, whose output depends on CPU features and a per-process seed), is
//! fast on short inputs, and has independent implementations (the tests check values computed
//! with Python's `xxhash`). The 64-bit hash is reduced to `0..shards` by multiply-shift
//! (`hash * shards >> 64`), which uses the high bits and needs no division.
//!
//! The seed is public, so a client can choose handles that all land on one shard; that only
//! concentrates its own pools on one core, which per-pool and per-shard limits bound.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The fixed seed of the shard hash: b"RSERPOOL" read as a big-endian u64. Never change it: all
/// registrars of a deployment must agree on it.
pub const SHARD_HASH_SEED: u64 = u64::from_be_bytes(*b"RSERPOOL");

/// The 64-bit shard hash of a pool handle (XXH3-64, seed [`SHARD_HASH_SEED`]).
pub fn shard_hash(handle: &[u8]) -> u64 {
    xxh3_64_with_seed(handle, SHARD_HASH_SEED)
}

/// The shard, in `0..shards`, that owns the pool `handle`; 0 when `shards` is 0.
pub fn shard_of(handle: &[u8], shards: u16) -> u16 {
    // (hash * shards) >> 64 is below `shards`, so the cast cannot truncate.
    ((u128::from(shard_hash(handle)) * u128::from(shards)) >> 64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed independently with Python's `xxhash` package:
    /// `xxhash.xxh3_64_intdigest(handle, seed=int.from_bytes(b"RSERPOOL", "big"))`, and the
    /// shard as `(h * shards) >> 64`.
    #[test]
    fn fixed_values() {
        assert_eq!(SHARD_HASH_SEED, 0x5253_4552_504f_4f4c);
        assert_eq!(shard_hash(b""), 0xbca2_0e75_4e88_cc90);
        assert_eq!(shard_hash(b"echo"), 0x1e0a_aa4c_9b9b_057a);
        assert_eq!(shard_hash(b"db.shard-07"), 0x1b46_ed96_0704_6a2b);
        assert_eq!(shard_hash(b"org.example.payments.settlement.eu-west1"), 0xef97_074c_b37a_c736);
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(shard_hash(&bytes), 0x8e05_fcf3_5e9e_c35f);

        let expect: [(&[u8], [u16; 8]); 4] = [
            (b"", [0, 1, 2, 2, 5, 11, 47, 48289]),
            (b"echo", [0, 0, 0, 0, 0, 1, 7, 7690]),
            (b"db.shard-07", [0, 0, 0, 0, 0, 1, 6, 6982]),
            (b"org.example.payments.settlement.eu-west1", [0, 1, 2, 3, 7, 14, 59, 61334]),
        ];
        for (handle, shards) in expect {
            for (n, want) in [1u16, 2, 3, 4, 8, 16, 64, 65535].into_iter().zip(shards) {
                assert_eq!(shard_of(handle, n), want, "{handle:?} over {n} shards");
            }
        }
    }

    #[test]
    fn zero_shards_is_shard_zero() {
        assert_eq!(shard_of(b"echo", 0), 0);
    }

    #[test]
    fn spreads_handles() {
        let mut counts = [0u32; 4];
        for i in 0..4000u32 {
            counts[usize::from(shard_of(format!("pool-{i}").as_bytes(), 4))] += 1;
        }
        // Each shard gets a fair share (binomial sd is about 27 here).
        assert!(counts.iter().all(|&c| (850..=1150).contains(&c)), "{counts:?}");
    }
}
