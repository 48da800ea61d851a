//! Backend selection tables computed in userspace and written to the data
//! plane: the Maglev consistent-hash lookup table (for the hashing
//! schedulers) and the smooth weighted round-robin cycle (for the
//! round-robin scheduler).
//!
//! Everything here is a pure function of its arguments: no I/O, no clocks,
//! no randomness and no std hasher. Two controllers (an HA pair, or one
//! controller before and after a restart) that see the same backends must
//! compute the same tables, otherwise established flows would be sent to a
//! different backend on failover. That is why the Maglev permutation of a
//! backend depends only on its identity bytes and on the fixed hash below,
//! never on map ids, input order, the platform or the Rust version.

/// Table value meaning "no backend": written to every slot when no backend
/// has a non-zero weight, so the data plane can tell an empty service apart
/// from a real backend id.
pub const NO_BACKEND: u32 = u32::MAX;

/// Returns whether `n` is prime.
///
/// Maglev needs a prime table size so that every `skip` in `1..m` is coprime
/// with `m`, which makes each backend's preference list a full permutation
/// of the slots; configuration validation uses this to reject other sizes.
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Every prime above 3 is 6k ± 1; u64 keeps `i * i` from overflowing
    // for n close to u32::MAX.
    let n = u64::from(n);
    let mut i: u64 = 5;
    while i * i <= n {
        if n.is_multiple_of(i) || n.is_multiple_of(i + 2) {
            return false;
        }
        i += 6;
    }
    true
}

/// One backend as input to [`build`].
#[derive(Debug, Clone, Copy)]
pub struct Weighted<'a> {
    /// Opaque value written into the table slots this backend owns (for
    /// example an index into the backend map). It does not influence which
    /// slots the backend gets, so ids may differ between controllers.
    pub id: u32,
    /// Stable name of the backend, e.g. the bytes of `"192.0.2.11:8080"`.
    /// The backend's slot preferences are derived from these bytes only, so
    /// they must be identical on every controller and unique per service.
    pub identity: &'a [u8],
    /// Relative share of the table; 0 means the backend gets no slot (for
    /// example while it drains or fails health checks).
    pub weight: u32,
}

// Seeds for the two hashes Maglev needs (offset and skip). They are part of
// the cross-controller contract: changing either one reshuffles every table
// and breaks flow affinity across an upgrade. ASCII "maglev-o" / "maglev-s".
const SEED_OFFSET: u64 = 0x6d61_676c_6576_2d6f;
const SEED_SKIP: u64 = 0x6d61_676c_6576_2d73;

const FNV64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a, continuing from `state`. Chosen because it is tiny,
/// specified byte by byte, and has published test vectors.
fn fnv1a64(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(FNV64_PRIME);
    }
    state
}

/// `MurmurHash3`'s 64-bit finaliser. FNV-1a alone mixes the last bytes of
/// the input poorly into the high and low bits, and identities such as
/// `"192.0.2.11:8080"` and `"192.0.2.12:8080"` differ in a single byte; the
/// finaliser makes every input bit affect every output bit.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Seeded identity hash: `fmix64(FNV-1a(seed as 8 little-endian bytes ||
/// identity))`. Feeding the seed through the hash (rather than XOR-ing it
/// onto the result) makes the offset and skip hashes independent.
fn hash(seed: u64, identity: &[u8]) -> u64 {
    fmix64(fnv1a64(
        fnv1a64(FNV64_OFFSET_BASIS, &seed.to_le_bytes()),
        identity,
    ))
}

/// Per-backend state while filling the table.
struct Filler {
    id: u32,
    weight: u64,
    offset: u64,
    skip: u64,
    /// Index `j` of the next preference to try.
    next: u64,
    /// Katran's cumulative weight: grows by `weight` each round and pays
    /// `max_weight` for every slot placed.
    credit: u64,
}

/// Builds the Maglev lookup table of size `m` (Eisenbud et al., "Maglev: A
/// Fast and Reliable Software Network Load Balancer", NSDI 2016, §3.4),
/// weighted the way Katran does it.
///
/// Each backend prefers slots in the order `(offset + j * skip) % m`, with
/// `offset = h1(identity) % m` and `skip = h2(identity) % (m - 1) + 1`.
/// Backends take turns claiming their most preferred free slot; in every
/// round each backend adds its weight to an accumulator and claims one slot
/// each time the accumulator reaches the largest weight, so slot counts are
/// proportional to weights up to rounding: backend `i` of `n` misses its
/// exact share `m * w_i / W` by less than `1 + n * w_i / W` slots, because
/// the per-backend rounding over full rounds and the final partial round
/// each cost at most one slot. Backends with weight 0 get
/// no slot; if no backend has a non-zero weight every slot is
/// [`NO_BACKEND`].
///
/// The input is sorted by identity first, so the order of `backends` does
/// not matter and two callers with the same identities and weights (but any
/// ids) get the same identity in every slot. Identities must be unique:
/// backends sharing an identity share a preference list and are ordered by
/// weight and then id, which other controllers may not reproduce. An `id`
/// equal to [`NO_BACKEND`] is indistinguishable from an empty slot.
///
/// `m` must be prime (checked in debug builds). In release builds a
/// non-prime `m` does not hang or panic (except `m == 0`, which yields an
/// empty table), but some slots may stay [`NO_BACKEND`].
pub fn build(backends: &[Weighted<'_>], m: u32) -> Vec<u32> {
    debug_assert!(is_prime(m), "maglev table size {m} is not prime");
    let m_len = m as usize;
    let mut table = vec![NO_BACKEND; m_len];
    if m == 0 {
        return table;
    }

    let mut active: Vec<&Weighted<'_>> = backends.iter().filter(|b| b.weight > 0).collect();
    if active.is_empty() {
        return table;
    }
    // Ties (duplicate identities) fall back to weight and id only so the
    // result does not depend on input order within this controller.
    active.sort_unstable_by(|a, b| (a.identity, a.weight, a.id).cmp(&(b.identity, b.weight, b.id)));

    let m64 = u64::from(m);
    // m == 1 would make the skip modulus 0; any skip works for one slot.
    let skip_modulus = (m64 - 1).max(1);
    let mut fillers: Vec<Filler> = active
        .iter()
        .map(|b| Filler {
            id: b.id,
            weight: u64::from(b.weight),
            offset: hash(SEED_OFFSET, b.identity) % m64,
            skip: hash(SEED_SKIP, b.identity) % skip_modulus + 1,
            next: 0,
            credit: 0,
        })
        .collect();
    let max_weight = fillers.iter().map(|f| f.weight).max().unwrap_or(1);

    // A separate occupancy map (rather than testing for NO_BACKEND) keeps
    // the fill loop correct whatever ids the caller uses.
    let mut taken = vec![false; m_len];
    let mut filled: usize = 0;
    // Backends that still have untried preferences. With a prime m a
    // backend only runs out once the table is full; the counter exists so a
    // non-prime m in release builds terminates instead of spinning.
    let mut live = fillers.len();
    while filled < m_len && live > 0 {
        for f in &mut fillers {
            if f.next >= m64 {
                continue;
            }
            // credit < max_weight before the add and weight <= max_weight,
            // so the sum stays below 2^33.
            f.credit += f.weight;
            if f.credit < max_weight {
                continue;
            }
            f.credit -= max_weight;
            while f.next < m64 {
                // offset, next < m <= 2^32, so the sum fits in u64.
                let slot = (f.offset + f.next * f.skip) % m64;
                f.next += 1;
                #[allow(
                    clippy::cast_possible_truncation,
                    reason = "slot < m, and m is a u32 that already sized the table"
                )]
                let slot = slot as usize;
                if !taken[slot] {
                    taken[slot] = true;
                    table[slot] = f.id;
                    filled += 1;
                    break;
                }
            }
            if f.next >= m64 {
                live -= 1;
            }
            if filled == m_len {
                break;
            }
        }
    }
    table
}

/// Greatest common divisor; `gcd(0, x) == x`.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Scales `weights` (all non-zero, sum `total` > `max_len`, count <=
/// `max_len`) down so they sum to at most `max_len` while every weight stays
/// at least 1. Finds the largest target `l` for which
/// `sum(max(1, w * l / total))` still fits; the sum is monotone in `l`, and
/// `l = 0` always fits because there are at most `max_len` weights.
fn scale_down(weights: &[u64], total: u128, max_len: u128) -> Vec<u64> {
    let scaled = |l: u128| -> Vec<u64> {
        weights
            .iter()
            .map(|&w| {
                // l <= max_len < total, so w * l / total < w and fits u64.
                let s = u64::try_from(u128::from(w) * l / total).unwrap_or(u64::MAX);
                s.max(1)
            })
            .collect()
    };
    let fits = |l: u128| scaled(l).iter().map(|&w| u128::from(w)).sum::<u128>() <= max_len;
    let (mut lo, mut hi) = (0u128, max_len);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    scaled(lo)
}

/// Returns one cycle of nginx's smooth weighted round-robin over
/// `(id, weight)` pairs: the data plane walks this sequence, one entry per
/// new flow, which spreads each backend's picks evenly through the cycle
/// instead of sending bursts to the heaviest backend.
///
/// For each pick every backend's current value grows by its weight, the
/// largest current value wins (ties go to the lower id) and the winner pays
/// back the total weight. The cycle is `sum(weights) / gcd(weights)` long,
/// ignoring weight-0 backends. If that exceeds `max_len`, the weights are
/// scaled down proportionally (rounding down, but never below 1) until the
/// cycle fits. If there are more non-zero backends than `max_len`, only the
/// `max_len` heaviest (ties: lower id) appear, once each. Empty or all-zero
/// input, or `max_len == 0`, gives an empty sequence.
pub fn smooth_round_robin(backends: &[(u32, u32)], max_len: usize) -> Vec<u32> {
    let mut active: Vec<(u32, u64)> = backends
        .iter()
        .filter(|&&(_, w)| w > 0)
        .map(|&(id, w)| (id, u64::from(w)))
        .collect();
    if active.is_empty() || max_len == 0 {
        return Vec::new();
    }
    // usize is at most 64 bits on every supported target.
    let max_len_wide = u128::try_from(max_len).unwrap_or(u128::MAX);

    if active.len() > max_len {
        // Cannot give everyone a slot: keep the heaviest, each once.
        active.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        active.truncate(max_len);
        for entry in &mut active {
            entry.1 = 1;
        }
    }
    // Ties in the pick go to the earlier entry, so sort by id to make the
    // sequence independent of input order.
    active.sort_unstable();

    let mut weights: Vec<u64> = active.iter().map(|&(_, w)| w).collect();
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    for w in &mut weights {
        *w /= g;
    }
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total > max_len_wide {
        weights = scale_down(&weights, total, max_len_wide);
        let g = weights.iter().fold(0, |g, &w| gcd(g, w));
        for w in &mut weights {
            *w /= g;
        }
    }
    // After scaling (or because it already fit) the total is <= max_len, so
    // it fits in usize and i128.
    let total: u64 = weights.iter().sum();
    let cycle = usize::try_from(total).unwrap_or(max_len).min(max_len);
    let total = i128::from(total);

    let mut current = vec![0i128; weights.len()];
    let mut sequence = Vec::with_capacity(cycle);
    for _ in 0..cycle {
        let mut best = 0;
        let mut best_value = i128::MIN;
        for (i, (c, &w)) in current.iter_mut().zip(&weights).enumerate() {
            *c += i128::from(w);
            if *c > best_value {
                best = i;
                best_value = *c;
            }
        }
        current[best] -= total;
        sequence.push(active[best].0);
    }
    sequence
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: u32 = 65_537;

    /// Counts in these tests are far below 2^32, so they convert exactly.
    fn f(n: usize) -> f64 {
        f64::from(u32::try_from(n).unwrap())
    }

    fn identities(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("192.0.2.{}:8080", 10 + i)).collect()
    }

    fn weighted<'a>(names: &'a [String], weights: &[u32]) -> Vec<Weighted<'a>> {
        names
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (name, &weight))| Weighted {
                id: u32::try_from(i).unwrap(),
                identity: name.as_bytes(),
                weight,
            })
            .collect()
    }

    /// Slot count per id, for ids `0..n`.
    fn counts(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &id in table {
            c[usize::try_from(id).unwrap()] += 1;
        }
        c
    }

    /// Largest |count - expected| in slots, with expected = m * w / total.
    fn worst_deviation(table: &[u32], weights: &[u32]) -> f64 {
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let m = f(table.len());
        counts(table, weights.len())
            .iter()
            .zip(weights)
            .map(|(&c, &w)| (f(c) - m * f64::from(w) / total).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn is_prime_known_values() {
        let primes = [2, 3, 5, 7, 11, 13, 97, 251, 1031, 4093, 65_537];
        let composites = [0, 1, 4, 6, 9, 15, 25, 49, 91, 1027, 65_535, 65_536];
        for p in primes {
            assert!(is_prime(p), "{p} is prime");
        }
        for c in composites {
            assert!(!is_prime(c), "{c} is not prime");
        }
        assert!(is_prime(4_294_967_291), "largest 32-bit prime");
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn fnv_matches_published_vectors() {
        assert_eq!(fnv1a64(FNV64_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV64_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            fnv1a64(FNV64_OFFSET_BASIS, b"foobar"),
            0x8594_4171_f739_67e8
        );
    }

    #[test]
    fn equal_weights_balance_on_big_table() {
        let names = identities(10);
        let weights = [1; 10];
        let table = build(&weighted(&names, &weights), BIG);
        assert_eq!(table.len(), 65_537);
        let worst = worst_deviation(&table, &weights);
        let expected = f64::from(BIG) / 10.0;
        println!(
            "m=65537 N=10 equal: worst deviation {worst:.2} slots ({:.4}%)",
            100.0 * worst / expected
        );
        assert!(
            worst <= 0.01 * expected,
            "worst deviation {worst:.2} slots exceeds 1% of {expected:.1}"
        );
        // Katran's scheme hands out slots strictly in rounds, so equal
        // weights differ by at most one slot.
        assert!(worst <= 1.0, "worst deviation {worst:.2} slots");
    }

    #[test]
    fn equal_weights_balance_on_small_table() {
        let names = identities(10);
        let weights = [1; 10];
        let table = build(&weighted(&names, &weights), 1031);
        let worst = worst_deviation(&table, &weights);
        println!(
            "m=1031 N=10 equal: worst deviation {worst:.2} slots ({:.3} points of the table)",
            100.0 * worst / 1031.0
        );
        assert!(
            worst <= 0.01 * 1031.0,
            "worst deviation {worst:.2} slots exceeds 1% of the table"
        );
        // The honest tight bound: 1031 = 10 * 103 + 1, so one backend gets
        // 104 and the rest 103 (deviation 0.9 slot).
        assert!(worst <= 1.0, "worst deviation {worst:.2} slots");
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let names = identities(4);
        let weights = [100, 200, 300, 400];
        let table = build(&weighted(&names, &weights), BIG);
        let c = counts(&table, 4);
        let mut worst_rel: f64 = 0.0;
        for (i, (&got, &w)) in c.iter().zip(&weights).enumerate() {
            let expected = f64::from(BIG) * f64::from(w) / 1000.0;
            let rel = (f(got) - expected).abs() / expected;
            worst_rel = worst_rel.max(rel);
            assert!(
                rel <= 0.01,
                "backend {i}: {got} slots, expected {expected:.1}"
            );
        }
        println!(
            "m=65537 weights 100..400: counts {c:?}, worst relative deviation {:.5}%",
            100.0 * worst_rel
        );
    }

    #[test]
    fn skewed_weights_stay_within_rounding_bound() {
        let names = identities(5);
        let weights = [1, 7, 13, 1000, 999];
        let total: u32 = weights.iter().sum();
        for m in [13, 1031, BIG] {
            let table = build(&weighted(&names, &weights), m);
            let c = counts(&table, weights.len());
            let mut worst: f64 = 0.0;
            for (&got, &w) in c.iter().zip(&weights) {
                let share = f64::from(w) / f64::from(total);
                let dev = (f(got) - f64::from(m) * share).abs();
                worst = worst.max(dev);
                assert!(dev < 1.0 + 5.0 * share, "m={m}: {got} slots for weight {w}");
            }
            println!("m={m} weights {weights:?}: counts {c:?}, worst deviation {worst:.2} slots");
        }
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let names = identities(3);
        let table = build(&weighted(&names, &[1, 0, 1]), 1031);
        assert!(!table.contains(&1));
        assert!(!table.contains(&NO_BACKEND));
        let c = counts(&table, 3);
        assert_eq!(c[0] + c[2], 1031);

        let all_zero = build(&weighted(&names, &[0, 0, 0]), 1031);
        assert_eq!(all_zero.len(), 1031);
        assert!(all_zero.iter().all(|&v| v == NO_BACKEND));
        assert!(build(&[], 13).iter().all(|&v| v == NO_BACKEND));
    }

    #[test]
    fn single_backend_fills_everything() {
        let names = identities(1);
        let table = build(&weighted(&names, &[7]), 13);
        assert_eq!(table, vec![0; 13]);
    }

    #[test]
    fn deterministic_and_order_independent() {
        let names = identities(8);
        let weights = [3, 1, 4, 1, 5, 9, 2, 6];
        let a = weighted(&names, &weights);
        let t1 = build(&a, 4093);
        let t2 = build(&a, 4093);
        assert_eq!(t1, t2);

        // Another controller: different order, different ids.
        let mut b = a.clone();
        b.reverse();
        b.swap(1, 5);
        for (i, w) in b.iter_mut().enumerate() {
            w.id = 1000 + u32::try_from(i).unwrap();
        }
        let t3 = build(&b, 4093);
        let identity_of = |table: &[u32], list: &[Weighted<'_>]| -> Vec<Vec<u8>> {
            table
                .iter()
                .map(|&id| list.iter().find(|w| w.id == id).unwrap().identity.to_vec())
                .collect()
        };
        assert_eq!(identity_of(&t1, &a), identity_of(&t3, &b));
    }

    #[test]
    fn table_is_pinned() {
        // Guards the cross-controller contract: a change to the hash, the
        // seeds or the fill order shows up here before it reaches an HA pair
        // running mixed versions.
        let names = identities(3);
        let table = build(&weighted(&names, &[1, 1, 2]), 13);
        assert_eq!(table, PINNED_13);
    }

    const PINNED_13: [u32; 13] = [2, 2, 1, 1, 2, 0, 0, 2, 2, 0, 2, 2, 1];

    #[test]
    fn removal_disrupts_little() {
        let names = identities(10);
        let all = weighted(&names, &[1; 10]);
        let before = build(&all, BIG);

        // Try every backend as the removed one and keep the worst case.
        let mut worst_of_table: f64 = 0.0;
        for removed in 0..10 {
            let survivors: Vec<Weighted<'_>> =
                all.iter().copied().filter(|w| w.id != removed).collect();
            let after = build(&survivors, BIG);

            let mut moved = 0usize;
            let mut survivor_slots = 0usize;
            for (&old, &new) in before.iter().zip(&after) {
                assert_ne!(new, NO_BACKEND);
                assert_ne!(new, removed, "removed backend still owns a slot");
                if old != removed {
                    survivor_slots += 1;
                    if old != new {
                        moved += 1;
                    }
                }
            }
            let of_table = f(moved) / f64::from(BIG);
            let of_survivors = f(moved) / f(survivor_slots);
            println!(
                "m=65537 N=10, remove id {removed}: {moved} survivor slots changed owner = \
                 {:.3}% of the table, {:.3}% of survivor slots",
                100.0 * of_table,
                100.0 * of_survivors
            );
            worst_of_table = worst_of_table.max(of_table);
        }
        println!(
            "worst disruption: {:.3}% of the table",
            100.0 * worst_of_table
        );
        // Measured worst is well under 0.5%; a reference model of classic
        // Maglev with random permutations gives 0.25-0.33% for this setup.
        // The paper's "few percent" refers to larger backend churn.
        assert!(
            worst_of_table < 0.01,
            "{:.3}% of the table moved",
            100.0 * worst_of_table
        );
    }

    #[test]
    #[ignore = "timing; run with --release -- --ignored"]
    fn build_time_big_table() {
        let names = identities(100);
        let backends = weighted(&names, &[1; 100]);
        let start = std::time::Instant::now();
        let runs: u32 = 20;
        for _ in 0..runs {
            std::hint::black_box(build(std::hint::black_box(&backends), BIG));
        }
        println!(
            "build m=65537 N=100: {:?} per table",
            start.elapsed() / runs
        );
        let table = build(&backends, BIG);
        let weights = [1; 100];
        println!(
            "m=65537 N=100 equal: worst deviation {:.2} slots",
            worst_deviation(&table, &weights)
        );
    }

    #[test]
    fn smooth_round_robin_classic_sequence() {
        let seq = smooth_round_robin(&[(1, 5), (2, 1), (3, 1)], 100);
        assert_eq!(seq, vec![1, 1, 2, 1, 3, 1, 1]);
        // Input order does not matter.
        assert_eq!(smooth_round_robin(&[(3, 1), (1, 5), (2, 1)], 100), seq);
    }

    #[test]
    fn smooth_round_robin_counts_equal_weights() {
        let input = [(10, 4), (20, 6), (30, 0), (40, 2)];
        let seq = smooth_round_robin(&input, 1000);
        // gcd 2: cycle is (4 + 6 + 2) / 2.
        assert_eq!(seq.len(), 6);
        let count = |id| seq.iter().filter(|&&x| x == id).count();
        assert_eq!((count(10), count(20), count(30), count(40)), (2, 3, 0, 1));

        let seq = smooth_round_robin(&[(1, 3), (2, 7)], 1000);
        assert_eq!(seq.len(), 10);
        assert_eq!(seq.iter().filter(|&&x| x == 1).count(), 3);
    }

    #[test]
    fn smooth_round_robin_scales_to_fit() {
        let input = [(1, 1000), (2, 3001), (3, 1), (4, 2000)];
        let seq = smooth_round_robin(&input, 100);
        assert!(!seq.is_empty() && seq.len() <= 100, "len {}", seq.len());
        let count = |id| seq.iter().filter(|&&x| x == id).count();
        println!(
            "scaled cycle len {}: counts {:?}",
            seq.len(),
            [count(1), count(2), count(3), count(4)]
        );
        assert!(count(3) >= 1, "tiny weight keeps a slot");
        let share = |id| f(count(id)) / f(seq.len());
        let total = 6002.0;
        for (id, w) in [(1, 1000.0), (2, 3001.0), (4, 2000.0)] {
            let err = (share(id) - w / total).abs();
            assert!(
                err < 0.02,
                "id {id}: share {:.3} vs {:.3}",
                share(id),
                w / total
            );
        }

        // Large coprime weights near u32::MAX still fit.
        let seq = smooth_round_robin(&[(1, u32::MAX), (2, u32::MAX - 1)], 64);
        assert!(seq.len() <= 64);
        assert!(seq.contains(&1) && seq.contains(&2));

        // More backends than room: the heaviest survive (the tie between 2
        // and 4 goes to the lower id), once each, in id order.
        let seq = smooth_round_robin(&[(1, 1), (2, 5), (3, 9), (4, 5)], 2);
        assert_eq!(seq, vec![2, 3]);
    }

    #[test]
    fn smooth_round_robin_empty() {
        assert!(smooth_round_robin(&[], 10).is_empty());
        assert!(smooth_round_robin(&[(1, 0), (2, 0)], 10).is_empty());
        assert!(smooth_round_robin(&[(1, 1)], 0).is_empty());
    }
}
