//! The PE checksum of an owner (WIRE.md section 7.1): an RFC 1071 one's-complement sum over, for
//! each PE the owner holds, the pool handle's bytes (padded with a zero byte to an even length)
//! followed by the 4-byte PE identifier.
//!
//! The sum is kept *unfolded* in a `u64`: adding a PE adds its words, removing it subtracts
//! exactly what was added, so every change is O(1) and the integer is always the true sum of the
//! words of the PEs held. Folding and complementing happen only when the value is read. A `u64`
//! cannot overflow: it would take more than 2^47 words of 0xffff.

/// Sum of the big-endian 16-bit words of `handle`, padded with one zero byte if its length is
/// odd. Pools keep it so that a PE's contribution costs two additions.
pub fn handle_words(handle: &[u8]) -> u64 {
    let mut chunks = handle.chunks_exact(2);
    let mut sum: u64 = 0;
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Sum of the two 16-bit words of a PE identifier in network order.
pub const fn pe_id_words(pe_id: u32) -> u64 {
    (pe_id >> 16) as u64 + (pe_id & 0xffff) as u64
}

/// The words one PE contributes: its pool handle's words (see [`handle_words`]) and its id's.
pub const fn pe_words(handle_words: u64, pe_id: u32) -> u64 {
    handle_words + pe_id_words(pe_id)
}

/// An incremental PE checksum accumulator (the unfolded sum of every word added).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeChecksum {
    sum: u64,
}

impl PeChecksum {
    /// The accumulator of an owner holding no PE; its [`value`](Self::value) is 0xffff.
    pub const EMPTY: Self = Self { sum: 0 };

    /// Adds the words of one PE (from [`pe_words`]).
    pub fn add(&mut self, words: u64) {
        self.sum = self.sum.wrapping_add(words);
    }

    /// Removes the words of one PE previously added with [`add`](Self::add).
    pub fn sub(&mut self, words: u64) {
        // Never underflows: only words that were added are subtracted (checked by the property
        // test against a from-scratch recomputation).
        self.sum = self.sum.wrapping_sub(words);
    }

    /// Adds every PE of `other` (used when one owner takes over another's PEs).
    pub fn merge(&mut self, other: Self) {
        self.add(other.sum);
    }

    /// Adds one PE given by its pool handle and identifier.
    pub fn add_pe(&mut self, handle: &[u8], pe_id: u32) {
        self.add(pe_words(handle_words(handle), pe_id));
    }

    /// The unfolded sum (accumulators of several shards add up to the registrar's).
    pub const fn raw(&self) -> u64 {
        self.sum
    }

    /// An accumulator holding the unfolded sum `sum`.
    pub const fn from_raw(sum: u64) -> Self {
        Self { sum }
    }

    /// The checksum as sent in an ENRP Presence: the sum folded to 16 bits with end-around
    /// carry, then complemented.
    pub const fn value(&self) -> u16 {
        fold_complement(self.sum)
    }
}

/// Folds a wide one's-complement sum to 16 bits (end-around carry) and complements it.
pub const fn fold_complement(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of a set of (pool handle, PE identifier) pairs, computed from scratch.
pub fn pe_checksum<'a>(pes: impl IntoIterator<Item = (&'a [u8], u32)>) -> u16 {
    let mut acc = PeChecksum::EMPTY;
    for (handle, id) in pes {
        acc.add_pe(handle, id);
    }
    acc.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071 over a byte string, word by word with end-around carry (independent of the
    /// incremental code above).
    fn rfc1071(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in bytes.chunks(2) {
            let word = u32::from(chunk[0]) << 8 | u32::from(*chunk.get(1).unwrap_or(&0));
            sum += word;
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn index_worked_examples() {
        // shared/rserpool/INDEX.md, section "PE checksum".
        assert_eq!(pe_checksum([]), 0xffff);
        assert_eq!(pe_checksum([(&b"echo"[..], 0x3c9e1f07)]), 0xd687);
        assert_eq!(pe_checksum([(&b"db.shard-07"[..], 0x1f2e3d4c)]), 0xd1b9);
        assert_eq!(pe_checksum([(&b"echo"[..], 0x3c9e1f07), (&b"echo"[..], 0x7d41a2b8)]), 0xe8ba);
        let four: [(&[u8], u32); 4] = [
            (b"echo", 0x3c9e1f07),
            (b"echo", 0x7d41a2b8),
            (b"db.shard-07", 0x1f2e3d4c),
            (b"org.example.payments.settlement.eu-west1", 0x6b1e55a2),
        ];
        assert_eq!(pe_checksum(four), 0x0ef2);
        // Any order gives the same value.
        let mut rev = four;
        rev.reverse();
        assert_eq!(pe_checksum(rev), 0x0ef2);
        // The byte string INDEX.md gives, through a plain RFC 1071 implementation.
        let bytes = hex("6563686f3c9e1f076563686f7d41a2b864622e73686172642d3037001f2e3d4c6f72672e6578616d70\
             6c652e7061796d656e74732e736574746c656d656e742e65752d77657374316b1e55a2");
        assert_eq!(rfc1071(&bytes), 0x0ef2);
    }

    #[test]
    fn add_then_sub_is_identity() {
        let mut acc = PeChecksum::EMPTY;
        acc.add_pe(b"echo", 0x3c9e1f07);
        acc.add_pe(b"db.shard-07", 0x1f2e3d4c);
        acc.sub(pe_words(handle_words(b"echo"), 0x3c9e1f07));
        assert_eq!(acc.value(), 0xd1b9);
        acc.sub(pe_words(handle_words(b"db.shard-07"), 0x1f2e3d4c));
        assert_eq!(acc, PeChecksum::EMPTY);
        assert_eq!(acc.value(), 0xffff);
    }

    #[test]
    fn merge_adds_sets() {
        let mut a = PeChecksum::EMPTY;
        a.add_pe(b"echo", 0x3c9e1f07);
        let mut b = PeChecksum::EMPTY;
        b.add_pe(b"echo", 0x7d41a2b8);
        a.merge(b);
        assert_eq!(a.value(), 0xe8ba);
    }
}
