//! Internet checksums (RFC 1071), updated incrementally (RFC 1624) when a
//! field changes, so forwarding never re-reads the payload.

/// Folds a 32-bit one's-complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "folded twice: fits 16 bits"
    )]
    let folded = sum as u16;
    folded
}

/// The two 16-bit halves of `word` added: its share of a one's-complement
/// sum, in whatever byte order it was read.
#[inline(always)]
pub fn words(word: u32) -> u32 {
    (word & 0xffff) + (word >> 16)
}

/// `checksum` after fields changed by `delta` (the sum of each old word's
/// complement and each new word, unfolded; RFC 1624 eqn. 3).
#[inline(always)]
pub fn apply(checksum: u16, delta: u32) -> u16 {
    !fold(u32::from(!checksum) + delta)
}

/// The checksum after the bytes `old` were replaced by `new` (RFC 1624,
/// eqn. 3: HC' = ~(~HC + ~m + m')). `N` is even.
#[inline(always)]
pub fn replace<const N: usize>(checksum: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = u32::from(!checksum);
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    !fold(sum)
}

/// The checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(header: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
        i += 2;
    }
    !fold(sum)
}

/// `sum` plus the big-endian 16-bit words of `bytes` (`N` even), unfolded.
#[inline(always)]
pub fn add<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}
