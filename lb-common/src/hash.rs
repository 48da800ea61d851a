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

    /// `2001:db8:1::7` and `2001:db8:f::10` in map form.
    const V6_CLIENT: Addr = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
    const V6_VIP: Addr = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    #[test]
    fn known_values_stay_put() {
        // Pinned so a change to the hash (which would move every flow on an
        // upgrade) is a deliberate, visible decision. The values were not
        // produced by this code: source_hash is MurmurHash3_x86_32 of the
        // 16 address bytes with SEED, computed by the `mmh3` Python package
        // (5.3.1); flow_hash (MurmurHash3's blocks over the 40 bytes src,
        // dst, the ports word, the proto word, finalised with length 37) and
        // tunnel_hash (the avalanche of the folded words, length 20) by a
        // Python transcription of the published algorithm that agrees with
        // `mmh3` on whole-block inputs.
        let a = ipv4_mapped([198, 51, 100, 7]);
        let b = ipv4_mapped([203, 0, 113, 10]);
        assert_eq!(flow_hash(&a, &b, 40000, 80, 6), 0x64d8_c05c);
        assert_eq!(flow_hash(&a, &b, 40001, 80, 6), 0x957f_b458);
        assert_eq!(flow_hash(&a, &b, 40000, 80, 17), 0x6d75_ba4d);
        assert_eq!(flow_hash(&V6_CLIENT, &V6_VIP, 40000, 443, 17), 0x1a35_f57e);
        assert_eq!(source_hash(&a), 0x6c52_2a73);
        assert_eq!(source_hash(&b), 0x0760_7575);
        assert_eq!(source_hash(&V6_CLIENT), 0xc628_4f6c);
        assert_eq!(tunnel_hash(&a, 40000, 80), 0x8fc4_640a);
        assert_eq!(tunnel_hash(&a, 40001, 80), 0x9ffe_12ad);
        assert_eq!(tunnel_hash(&b, 40000, 80), 0x0f97_e27a);
        assert_eq!(tunnel_hash(&V6_CLIENT, 40000, 443), 0x8276_c2cc);
    }

    /// `MurmurHash3_x86_32` from this file's `mix` and `finish`, with the
    /// algorithm's tail (which the fixed-size inputs above never need).
    fn murmur3_32(data: &[u8], seed: u32) -> u32 {
        let mut blocks = data.chunks_exact(4);
        let mut hash = seed;
        for block in blocks.by_ref() {
            hash = mix(hash, u32::from_le_bytes(block.try_into().unwrap()));
        }
        let tail = blocks.remainder();
        if !tail.is_empty() {
            let mut word = [0u8; 4];
            word[..tail.len()].copy_from_slice(tail);
            let k = u32::from_le_bytes(word)
                .wrapping_mul(0xcc9e_2d51)
                .rotate_left(15)
                .wrapping_mul(0x1b87_3593);
            hash ^= k;
        }
        finish(hash, u32::try_from(data.len()).unwrap())
    }

    #[test]
    fn mix_and_finish_are_murmur3s() {
        // Published MurmurHash3_x86_32 test vectors (SMHasher's algorithm;
        // the same values `mmh3` gives).
        let vectors: [(&[u8], u32, u32); 8] = [
            (b"", 0, 0),
            (b"", 1, 0x514e_28b7),
            (b"", 0xffff_ffff, 0x81f1_6f39),
            (b"\0\0\0\0", 0, 0x2362_f9de),
            (b"aaaa", 0x9747_b28c, 0x5a97_808a),
            (b"test", 0, 0xba6b_d213),
            (b"Hello, world!", 0x9747_b28c, 0x2488_4cba),
            (
                b"The quick brown fox jumps over the lazy dog",
                0x9747_b28c,
                0x2fa8_26cd,
            ),
        ];
        for (data, seed, expected) in vectors {
            assert_eq!(murmur3_32(data, seed), expected, "{data:?} seed {seed:#x}");
        }
        // source_hash is MurmurHash3 of the address bytes, nothing else.
        for addr in [ipv4_mapped([198, 51, 100, 7]), V6_CLIENT, V6_VIP] {
            assert_eq!(source_hash(&addr), murmur3_32(&addr, SEED));
        }
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
