//! Pool Member Selection Policy parameter (RFC 5356; WIRE.md section 4).

use super::check::Ctx;
use super::error::{Error, ErrorKind};
use super::field::u32_at;
use super::param::{Param, ParamType};
use super::writer::{Put, Writer};

/// The 32-bit policy type carried in a Pool Member Selection Policy parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyType(pub u32);

impl PolicyType {
    /// Round Robin (no values).
    pub const ROUND_ROBIN: Self = Self(0x0000_0001);
    /// Weighted Round Robin (weight).
    pub const WEIGHTED_ROUND_ROBIN: Self = Self(0x0000_0002);
    /// Random (no values).
    pub const RANDOM: Self = Self(0x0000_0003);
    /// Weighted Random (weight).
    pub const WEIGHTED_RANDOM: Self = Self(0x0000_0004);
    /// Priority (priority).
    pub const PRIORITY: Self = Self(0x0000_0005);
    /// Least Used (load).
    pub const LEAST_USED: Self = Self(0x4000_0001);
    /// Least Used with Degradation (load, load degradation).
    pub const LEAST_USED_DEGRADATION: Self = Self(0x4000_0002);
    /// Priority Least Used (load, load degradation).
    pub const PRIORITY_LEAST_USED: Self = Self(0x4000_0003);
    /// Randomized Least Used (load).
    pub const RANDOMIZED_LEAST_USED: Self = Self(0x4000_0004);

    /// Number of 32-bit values that follow this type on the wire, or `None` for a type this
    /// implementation does not know.
    #[inline]
    pub const fn value_count(self) -> Option<usize> {
        // Known types are 1..=5 and 0x40000001..=0x40000004: index a 16-entry table by the low
        // three bits and bit 30 (one lookup instead of a chain of comparisons on the hot path).
        const NONE: u8 = u8::MAX;
        const COUNTS: [u8; 16] = [NONE, 0, 1, 0, 1, 1, NONE, NONE, NONE, 1, 2, 2, 1, NONE, NONE, NONE];
        if self.0 & !0x4000_0007 != 0 {
            return None;
        }
        match COUNTS[((self.0 & 7) | ((self.0 >> 27) & 8)) as usize] {
            NONE => None,
            n => Some(n as usize),
        }
    }

    /// Whether the type is one of the load-based policies (bit 30 set, RFC 5356 section 4).
    pub const fn is_load_based(self) -> bool {
        self.0 & 0x4000_0000 != 0
    }

    /// The RFC 5356 name, or `None` for an unknown type.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::ROUND_ROBIN => "Round Robin",
            Self::WEIGHTED_ROUND_ROBIN => "Weighted Round Robin",
            Self::RANDOM => "Random",
            Self::WEIGHTED_RANDOM => "Weighted Random",
            Self::PRIORITY => "Priority",
            Self::LEAST_USED => "Least Used",
            Self::LEAST_USED_DEGRADATION => "Least Used with Degradation",
            Self::PRIORITY_LEAST_USED => "Priority Least Used",
            Self::RANDOMIZED_LEAST_USED => "Randomized Least Used",
            _ => return None,
        })
    }
}

/// A known selection policy with its values. Loads are scaled so that 0 = 0 % and
/// `u32::MAX` = 100 %.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Round Robin.
    RoundRobin,
    /// Weighted Round Robin: a PE appears `weight` times per round.
    WeightedRoundRobin {
        /// Appearances per round.
        weight: u32,
    },
    /// Random: PEs drawn uniformly.
    Random,
    /// Weighted Random: PEs drawn with probability proportional to `weight`.
    WeightedRandom {
        /// Relative probability.
        weight: u32,
    },
    /// Priority: highest priority first, equals rotate.
    Priority {
        /// Larger is preferred.
        priority: u32,
    },
    /// Least Used: lowest load first, equals rotate.
    LeastUsed {
        /// Current load.
        load: u32,
    },
    /// Least Used with Degradation: lowest load plus accumulated degradation first.
    LeastUsedDegradation {
        /// Current load.
        load: u32,
        /// Added to the PE's degradation each time it is selected.
        degradation: u32,
    },
    /// Priority Least Used: lowest load plus a static degradation penalty first.
    PriorityLeastUsed {
        /// Current load.
        load: u32,
        /// Static penalty added to the load.
        degradation: u32,
    },
    /// Randomized Least Used: drawn with probability proportional to the free capacity.
    RandomizedLeastUsed {
        /// Current load.
        load: u32,
    },
}

impl Policy {
    /// The wire type of this policy.
    pub const fn policy_type(&self) -> PolicyType {
        match self {
            Self::RoundRobin => PolicyType::ROUND_ROBIN,
            Self::WeightedRoundRobin { .. } => PolicyType::WEIGHTED_ROUND_ROBIN,
            Self::Random => PolicyType::RANDOM,
            Self::WeightedRandom { .. } => PolicyType::WEIGHTED_RANDOM,
            Self::Priority { .. } => PolicyType::PRIORITY,
            Self::LeastUsed { .. } => PolicyType::LEAST_USED,
            Self::LeastUsedDegradation { .. } => PolicyType::LEAST_USED_DEGRADATION,
            Self::PriorityLeastUsed { .. } => PolicyType::PRIORITY_LEAST_USED,
            Self::RandomizedLeastUsed { .. } => PolicyType::RANDOMIZED_LEAST_USED,
        }
    }

    /// Builds a policy from its type and exactly [`PolicyType::value_count`] values; `None` if
    /// the type is unknown or the count is wrong.
    pub fn from_values(policy_type: PolicyType, values: &[u32]) -> Option<Self> {
        Some(match (policy_type, values) {
            (PolicyType::ROUND_ROBIN, []) => Self::RoundRobin,
            (PolicyType::WEIGHTED_ROUND_ROBIN, &[weight]) => Self::WeightedRoundRobin { weight },
            (PolicyType::RANDOM, []) => Self::Random,
            (PolicyType::WEIGHTED_RANDOM, &[weight]) => Self::WeightedRandom { weight },
            (PolicyType::PRIORITY, &[priority]) => Self::Priority { priority },
            (PolicyType::LEAST_USED, &[load]) => Self::LeastUsed { load },
            (PolicyType::LEAST_USED_DEGRADATION, &[load, degradation]) => {
                Self::LeastUsedDegradation { load, degradation }
            }
            (PolicyType::PRIORITY_LEAST_USED, &[load, degradation]) => Self::PriorityLeastUsed { load, degradation },
            (PolicyType::RANDOMIZED_LEAST_USED, &[load]) => Self::RandomizedLeastUsed { load },
            _ => return None,
        })
    }

    /// The values that follow the type on the wire (0, 1 or 2 of them).
    #[inline]
    pub fn values(&self) -> PolicyValues {
        let (v, n) = match *self {
            Self::RoundRobin | Self::Random => ([0, 0], 0),
            Self::WeightedRoundRobin { weight } | Self::WeightedRandom { weight } => ([weight, 0], 1),
            Self::Priority { priority } => ([priority, 0], 1),
            Self::LeastUsed { load } | Self::RandomizedLeastUsed { load } => ([load, 0], 1),
            Self::LeastUsedDegradation { load, degradation } | Self::PriorityLeastUsed { load, degradation } => {
                ([load, degradation], 2)
            }
        };
        PolicyValues { v, n }
    }
}

/// Up to two policy values, as a slice via `Deref`; returned by [`Policy::values`].
#[derive(Clone, Copy, Debug)]
pub struct PolicyValues {
    v: [u32; 2],
    n: usize,
}

impl core::ops::Deref for PolicyValues {
    type Target = [u32];
    #[inline]
    fn deref(&self) -> &[u32] {
        &self.v[..self.n]
    }
}

/// A validated policy parameter: a known policy with its values, or a type this implementation
/// does not know (e.g. rsplib's distance-sensitive variants), which decodes without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyParam<'a> {
    /// A known policy.
    Known(Policy),
    /// An unknown policy type and its raw values.
    Unknown {
        /// The policy type.
        policy_type: PolicyType,
        /// The value bytes after the type.
        values: &'a [u8],
    },
}

impl PolicyParam<'_> {
    /// The policy type.
    pub fn policy_type(&self) -> PolicyType {
        match self {
            Self::Known(p) => p.policy_type(),
            Self::Unknown { policy_type, .. } => *policy_type,
        }
    }

    /// The owned form.
    pub fn to_repr(&self) -> PolicyRepr {
        match *self {
            Self::Known(p) => PolicyRepr::Known(p),
            Self::Unknown { policy_type, values } => PolicyRepr::Unknown { policy_type, values: values.to_vec() },
        }
    }
}

/// Owned policy parameter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PolicyRepr {
    /// A known policy.
    Known(Policy),
    /// An unknown policy type and its raw values.
    Unknown {
        /// The policy type.
        policy_type: PolicyType,
        /// The value bytes after the type.
        values: Vec<u8>,
    },
}

impl From<Policy> for PolicyRepr {
    fn from(p: Policy) -> Self {
        Self::Known(p)
    }
}

/// Validates a policy parameter: at least the type; a known type with exactly its values.
#[inline(always)]
pub(crate) fn check(ctx: &Ctx, p: &Param<'_>) -> Result<(), Error> {
    ctx.expect_min(p, 8)?;
    let values = p.value().len() - 4;
    let policy_type = u32_at(p.value(), 0);
    match PolicyType(policy_type).value_count() {
        Some(n) if values != 4 * n => {
            Err(ctx.fault(p, ErrorKind::PolicyValueCount { policy_type, values: values as u16 }))
        }
        _ => Ok(()),
    }
}

/// Decodes a policy parameter that [`check`] accepted.
#[inline]
pub(crate) fn decode<'a>(p: &Param<'a>) -> PolicyParam<'a> {
    let v = p.value();
    let policy_type = PolicyType(super::field::get_u32(v, 0).unwrap_or(0));
    let values = v.get(4..).unwrap_or(&[]);
    let word = |i: usize| super::field::get_u32(values, 4 * i).unwrap_or(0);
    let known = match policy_type.value_count() {
        Some(0) => Policy::from_values(policy_type, &[]),
        Some(1) => Policy::from_values(policy_type, &[word(0)]),
        Some(2) => Policy::from_values(policy_type, &[word(0), word(1)]),
        _ => None,
    };
    match known {
        Some(policy) => PolicyParam::Known(policy),
        None => PolicyParam::Unknown { policy_type, values },
    }
}

impl Policy {
    /// Encoded length of the policy parameter.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        8 + 4 * self.values().len()
    }
}

impl PolicyRepr {
    /// Encoded length of the policy parameter, padding included.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        match self {
            Self::Known(p) => p.encoded_len(),
            Self::Unknown { values, .. } => super::field::padded(8 + values.len()),
        }
    }
}

/// Emits a known policy parameter.
#[inline(always)]
pub fn emit(w: &mut impl Put, policy: &Policy) {
    let t = policy.policy_type().0.to_be_bytes();
    let head = |len: u8| [0, ParamType::POLICY.0 as u8, 0, len, t[0], t[1], t[2], t[3]];
    // Fixed-size writes: no length computed at run time, no call to memcpy.
    match policy.values()[..] {
        [] => w.array(&head(8)),
        [a] => {
            let [a0, a1, a2, a3] = a.to_be_bytes();
            let h = head(12);
            w.array(&[h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], a0, a1, a2, a3]);
        }
        [a, b, ..] => {
            let ([a0, a1, a2, a3], [b0, b1, b2, b3]) = (a.to_be_bytes(), b.to_be_bytes());
            let h = head(16);
            w.array(&[h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], a0, a1, a2, a3, b0, b1, b2, b3]);
        }
    }
}

/// Emits a policy parameter, known or not.
#[inline]
pub fn emit_repr(w: &mut Writer<'_>, policy: &PolicyRepr) {
    match policy {
        PolicyRepr::Known(p) => emit(w, p),
        PolicyRepr::Unknown { policy_type, values } => w.tlv(ParamType::POLICY, |w| {
            w.u32(policy_type.0);
            w.bytes(values);
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_counts_of_every_type() {
        let known = [
            (PolicyType::ROUND_ROBIN, 0),
            (PolicyType::WEIGHTED_ROUND_ROBIN, 1),
            (PolicyType::RANDOM, 0),
            (PolicyType::WEIGHTED_RANDOM, 1),
            (PolicyType::PRIORITY, 1),
            (PolicyType::LEAST_USED, 1),
            (PolicyType::LEAST_USED_DEGRADATION, 2),
            (PolicyType::PRIORITY_LEAST_USED, 2),
            (PolicyType::RANDOMIZED_LEAST_USED, 1),
        ];
        for (t, n) in known {
            assert_eq!(t.value_count(), Some(n), "{t:?}");
            assert!(t.name().is_some());
        }
        for t in [0, 6, 7, 0x4000_0000, 0x4000_0005, 0x4000_0007, 0x8000_0001, 0x4000_0011, 0x0000_0101, u32::MAX] {
            assert_eq!(PolicyType(t).value_count(), None, "{t:#x}");
            assert!(PolicyType(t).name().is_none(), "{t:#x}");
        }
    }
}
