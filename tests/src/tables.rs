//! The reference model's own scheduling tables and flow hash, written from
//! their specifications and never calling the code under test
//! (`lb::maglev`, `lb::plan`, `lb_common::hash`): if either side drifts from
//! the contract, the model and the kernel disagree and the model test fails.
//!
//! The contract these follow (docs/DESIGN.md §2, and the doc comments of
//! `lb::maglev` that pin it):
//!
//! - Maglev (Eisenbud et al., NSDI 2016, §3.4, "Algorithm 1"): table size
//!   `M` prime; a backend's identity is the text `"address:port"`; its
//!   preference list is `(offset + j * skip) mod M` with
//!   `offset = h(SEED_OFFSET, identity) mod M` and
//!   `skip = h(SEED_SKIP, identity) mod (M - 1) + 1`, where
//!   `h(seed, bytes) = fmix64(FNV-1a-64(seed as 8 little-endian bytes ++ bytes))`.
//!   Backends, sorted by identity bytes, take turns; weights are Katran's:
//!   each turn a backend adds its weight to a credit and claims its next
//!   free preferred slot when the credit reaches the largest weight (paying
//!   that weight back).
//! - Round robin (docs/DESIGN.md §2.6: "weighted, one step per new flow
//!   along a smooth sequence computed in advance"): nginx's smooth
//!   weighted round robin over the weighted backends, weights divided by
//!   their greatest common divisor;
//!   per pick every backend's credit grows by its weight, the largest credit
//!   wins (ties: the backend listed first) and pays back the total; one
//!   cycle is the sequence. Each new flow takes the next entry, per CPU.
//! - Flow hash: `MurmurHash3`'s 32-bit block mixing over the little-endian
//!   words of source, destination, `sport << 16 | dport` and protocol, seed
//!   "lblb", finalised with length 37; the source hash mixes the source
//!   only and finalises with length 16.
//! - Tunnel hash (a tunnel's outer source host bits, README "Flow hash"):
//!   the client address's four little-endian words folded by exclusive or,
//!   that with `sport << 16 | dport`, then `MurmurHash3`'s finalisation
//!   with length 20.

/// Slot value of the reference table for "no backend".
pub const EMPTY: Option<usize> = None;

/// FNV-1a 64-bit (Fowler, Noll, Vo), byte by byte.
fn fnv1a_64(mut state: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(0x0100_0000_01b3);
    }
    state
}

/// `MurmurHash3`'s 64-bit finaliser (`fmix64`).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The seeded identity hash of the Maglev contract.
fn identity_hash(seed: [u8; 8], identity: &[u8]) -> u64 {
    let basis = 0xcbf2_9ce4_8422_2325;
    // The seeds are the ASCII texts themselves, read as little-endian u64s
    // by lb: the bytes fed to FNV are the text reversed.
    let mut seed_bytes = seed;
    seed_bytes.reverse();
    fmix64(fnv1a_64(fnv1a_64(basis, &seed_bytes), identity))
}

/// One backend as the Maglev table sees it.
#[derive(Clone, Debug)]
pub struct MaglevBackend {
    /// What the table holds for it (an index chosen by the caller).
    pub index: usize,
    /// `"address:port"`.
    pub identity: String,
    /// Weight; 0 gets no slot.
    pub weight: u32,
}

/// The Maglev lookup table of prime size `m`: per slot, the `index` of the
/// backend that owns it, or [`EMPTY`] when no backend has a weight.
pub fn maglev(backends: &[MaglevBackend], m: usize) -> Vec<Option<usize>> {
    let mut backends: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    backends.sort_by(|a, b| a.identity.as_bytes().cmp(b.identity.as_bytes()));
    let mut table = vec![EMPTY; m];
    if backends.is_empty() {
        return table;
    }
    let m64 = m as u64;
    // The permutation of the paper, one row per backend.
    let permutation: Vec<Vec<usize>> = backends
        .iter()
        .map(|b| {
            let offset = identity_hash(*b"maglev-o", b.identity.as_bytes()) % m64;
            let skip = identity_hash(*b"maglev-s", b.identity.as_bytes()) % (m64 - 1) + 1;
            (0..m64)
                .map(|j| usize::try_from((offset + j * skip) % m64).expect("slot < m"))
                .collect()
        })
        .collect();
    let max_weight = backends.iter().map(|b| b.weight).max().expect("non-empty");
    let mut next = vec![0; backends.len()];
    let mut credit = vec![0u32; backends.len()];
    let mut filled = 0;
    'rounds: loop {
        for i in 0..backends.len() {
            credit[i] += backends[i].weight;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let mut slot = permutation[i][next[i]];
            while table[slot].is_some() {
                next[i] += 1;
                slot = permutation[i][next[i]];
            }
            table[slot] = Some(backends[i].index);
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'rounds;
            }
        }
    }
    table
}

/// One cycle of the smooth weighted round robin over `weights` (by index;
/// weight 0 never picked): the indices in the order new flows take them.
/// `None` when the cycle would be longer than `max_len` (the planner then
/// scales the weights down, which is not modelled); empty without weights.
pub fn smooth_round_robin(weights: &[u32], max_len: usize) -> Option<Vec<usize>> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w)));
    if divisor == 0 {
        return Some(Vec::new());
    }
    let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / divisor).collect();
    let total: u64 = reduced.iter().sum();
    let cycle = usize::try_from(total).ok().filter(|&len| len <= max_len)?;
    let total = i128::from(total);
    let mut credit = vec![0i128; reduced.len()];
    let mut sequence = Vec::with_capacity(cycle);
    for _ in 0..cycle {
        let mut best: Option<usize> = None;
        for (i, &weight) in reduced.iter().enumerate() {
            if weight == 0 {
                continue;
            }
            credit[i] += i128::from(weight);
            if best.is_none_or(|b| credit[i] > credit[b]) {
                best = Some(i);
            }
        }
        let best = best.expect("a weighted backend");
        credit[best] -= total;
        sequence.push(best);
    }
    Some(sequence)
}

/// `MurmurHash3` x86-32 block step.
fn murmur_block(hash: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (hash ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// `MurmurHash3` x86-32 finalisation.
fn murmur_final(hash: u32, len: u32) -> u32 {
    let mut h = hash ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The flow hash's seed, "lblb".
const HASH_SEED: u32 = u32::from_be_bytes(*b"lblb");

/// The 16-byte map form of an address (IPv4 as `::ffff:a.b.c.d`).
fn sixteen(addr: std::net::IpAddr) -> [u8; 16] {
    match addr {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

fn mix_address(mut hash: u32, addr: std::net::IpAddr) -> u32 {
    for word in sixteen(addr).chunks_exact(4) {
        hash = murmur_block(hash, u32::from_le_bytes(word.try_into().expect("4 bytes")));
    }
    hash
}

/// The flow hash of a 5-tuple (`maglev`, `least-conn`, `resource`).
pub fn flow_hash(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
) -> u32 {
    let mut hash = mix_address(mix_address(HASH_SEED, src), dst);
    hash = murmur_block(hash, (u32::from(sport) << 16) | u32::from(dport));
    hash = murmur_block(hash, u32::from(proto));
    murmur_final(hash, 37)
}

/// The source-address hash (`ip-hash`).
pub fn source_hash(src: std::net::IpAddr) -> u32 {
    murmur_final(mix_address(HASH_SEED, src), 16)
}

/// The tunnel hash of a packet's client address and ports (the host bits
/// of a tunnel's outer source).
pub fn tunnel_hash(src: std::net::IpAddr, sport: u16, dport: u16) -> u32 {
    let folded = sixteen(src)
        .chunks_exact(4)
        .map(|word| u32::from_le_bytes(word.try_into().expect("4 bytes")))
        .fold(0, |acc, word| acc ^ word);
    murmur_final(folded ^ ((u32::from(sport) << 16) | u32::from(dport)), 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_round_robin_gives_nginxs_sequence() {
        // nginx's own example (ngx_http_upstream_round_robin.c): weights
        // 5, 1, 1 give a a b a c a a.
        assert_eq!(
            smooth_round_robin(&[5, 1, 1], 100),
            Some(vec![0, 0, 1, 0, 2, 0, 0])
        );
        // Weights reduce by their divisor; ties go to the first listed; a
        // weight 0 is never picked.
        assert_eq!(smooth_round_robin(&[200, 0, 200], 100), Some(vec![0, 2]));
        assert_eq!(smooth_round_robin(&[0, 0], 100), Some(Vec::new()));
        assert_eq!(smooth_round_robin(&[60, 41], 100), None);
    }

    #[test]
    fn the_hashes_give_the_independently_computed_values() {
        // Computed outside Rust: source_hash by the `mmh3` Python package
        // (MurmurHash3_x86_32 of the 16 address bytes, seed "lblb"), the
        // others by a Python transcription of the published algorithm that
        // agrees with `mmh3` on whole-block inputs (lb-common pins the same).
        let a: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let b: std::net::IpAddr = "203.0.113.10".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1::7".parse().unwrap();
        let v: std::net::IpAddr = "2001:db8:f::10".parse().unwrap();
        assert_eq!(flow_hash(a, b, 40000, 80, 6), 0x64d8_c05c);
        assert_eq!(flow_hash(c, v, 40000, 443, 17), 0x1a35_f57e);
        assert_eq!(source_hash(a), 0x6c52_2a73);
        assert_eq!(source_hash(c), 0xc628_4f6c);
        assert_eq!(tunnel_hash(a, 40000, 80), 0x8fc4_640a);
        assert_eq!(tunnel_hash(a, 40001, 80), 0x9ffe_12ad);
        assert_eq!(tunnel_hash(b, 40000, 80), 0x0f97_e27a);
        assert_eq!(tunnel_hash(c, 40000, 443), 0x8276_c2cc);
    }

    #[test]
    fn fnv1a_64_matches_the_published_vectors() {
        let basis = 0xcbf2_9ce4_8422_2325;
        assert_eq!(fnv1a_64(basis, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(basis, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(basis, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn maglev_fills_every_slot_in_proportion() {
        let backends = [
            MaglevBackend {
                index: 0,
                identity: "192.0.2.11:80".into(),
                weight: 100,
            },
            MaglevBackend {
                index: 1,
                identity: "192.0.2.12:80".into(),
                weight: 300,
            },
        ];
        let table = maglev(&backends, 1009);
        let ones = table.iter().filter(|s| **s == Some(1)).count();
        assert!(table.iter().all(Option::is_some));
        assert!((750..765).contains(&ones), "{ones}");
    }
}
