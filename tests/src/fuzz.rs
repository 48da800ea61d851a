//! A small mutation fuzzer on stable Rust, built on proptest: every seed of
//! a target's corpus (`fuzz/corpus/<target>/`, committed) is run as it is,
//! then inputs are drawn from the seeds with mutations (bit flips, bytes
//! set, inserted, deleted, repeated, dictionary tokens, splices of two
//! seeds) and from random bytes. A check that panics or reports a broken
//! property fails the test with the input proptest shrank it to, in hex and
//! as text, to be kept in the corpus as a regression seed.
//!
//! How long: `LB_FUZZ_SECONDS=N` runs each target for N seconds (what
//! `cargo xtask fuzz --seconds N` sets); otherwise each runs the fixed
//! number of cases its test names, which bounds `cargo test`.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use proptest::{
    collection::vec,
    prelude::*,
    test_runner::{Config, TestCaseError, TestError, TestRunner},
};

/// Inputs never grow past this (a parser must cope with more, but larger
/// inputs only slow the run).
pub const MAX_INPUT: usize = 256 * 1024;

/// The corpus folder of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The seeds of `target`, by file name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    let mut seeds: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            (
                path.file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .into_owned(),
                bytes,
            )
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "{} holds no seed", dir.display());
    seeds
}

/// One change to an input; positions and lengths are taken modulo the
/// input's length when applied.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, Vec<u8>),
    Token(usize, usize),
    Delete(usize, usize),
    Repeat(usize, usize, u16),
    Splice(usize, usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (
            any::<usize>(),
            prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), any::<u8>()]
        )
            .prop_map(|(at, byte)| Mutation::SetByte(at, byte)),
        (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(at, token)| Mutation::Token(at, token)),
        (any::<usize>(), 1..64usize).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<usize>(), 1..64usize, 1..4096u16)
            .prop_map(|(at, len, times)| Mutation::Repeat(at, len, times)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(seed, from, at)| Mutation::Splice(seed, from, at)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

/// Applies `mutation` to `input`.
fn apply(input: &mut Vec<u8>, mutation: &Mutation, seeds: &[Vec<u8>], dictionary: &[&[u8]]) {
    let len = input.len();
    let at = |n: usize| if len == 0 { 0 } else { n % len };
    let at_or_end = |n: usize| n % (len + 1);
    match mutation {
        Mutation::FlipBit(n, bit) if len > 0 => input[at(*n)] ^= 1 << bit,
        Mutation::SetByte(n, byte) if len > 0 => input[at(*n)] = *byte,
        Mutation::Insert(n, bytes) => {
            let n = at_or_end(*n);
            input.splice(n..n, bytes.iter().copied());
        }
        Mutation::Token(n, token) if !dictionary.is_empty() => {
            let n = at_or_end(*n);
            let token = dictionary[token % dictionary.len()];
            input.splice(n..n, token.iter().copied());
        }
        Mutation::Delete(n, count) if len > 0 => {
            let n = at(*n);
            input.drain(n..(n + count).min(len));
        }
        Mutation::Repeat(n, count, times) if len > 0 => {
            let n = at(*n);
            let piece = input[n..(n + count).min(len)].to_vec();
            let extra = (piece.len() * usize::from(*times)).min(MAX_INPUT.saturating_sub(len));
            let copies: Vec<u8> = piece.iter().copied().cycle().take(extra).collect();
            input.splice(n..n, copies);
        }
        Mutation::Splice(seed, from, n) => {
            let other = &seeds[seed % seeds.len()];
            let from = from % (other.len() + 1);
            let n = at_or_end(*n);
            input.truncate(n);
            input.extend_from_slice(&other[from..]);
        }
        Mutation::Truncate(n) => input.truncate(at_or_end(*n)),
        _ => {}
    }
    input.truncate(MAX_INPUT);
}

/// Inputs for a target: mostly mutated seeds, some random bytes.
fn inputs(seeds: Vec<Vec<u8>>, dictionary: &'static [&'static [u8]]) -> BoxedStrategy<Vec<u8>> {
    let count = seeds.len();
    prop_oneof![
        1 => vec(any::<u8>(), 0..512),
        6 => (0..count, vec(mutation(), 1..10)).prop_map(move |(seed, mutations)| {
            let mut input = seeds[seed].clone();
            for mutation in &mutations {
                apply(&mut input, mutation, &seeds, dictionary);
            }
            input
        }),
    ]
    .boxed()
}

/// `bytes` in hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// How often a timed run prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long each target runs.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Cases(u32),
    Time(Duration),
}

impl Budget {
    fn from_env(cases: u32) -> Self {
        match std::env::var("LB_FUZZ_SECONDS")
            .ok()
            .map(|s| s.parse::<f64>())
        {
            Some(Ok(seconds)) if seconds > 0.0 => Self::Time(Duration::from_secs_f64(seconds)),
            Some(_) => panic!("LB_FUZZ_SECONDS must be a positive number of seconds"),
            None => Self::Cases(cases),
        }
    }
}

/// Fuzzes `check` with the corpus of `target` and `dictionary` (tokens the
/// format is made of), for `cases` cases or `LB_FUZZ_SECONDS`. `check`
/// returns an error for a broken property; a panic is a failure too.
pub fn fuzz(
    target: &str,
    dictionary: &'static [&'static [u8]],
    cases: u32,
    check: impl Fn(&[u8]) -> Result<(), String>,
) {
    let started = Instant::now();
    let seeds = corpus(target);
    for (name, seed) in &seeds {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(seed))) {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => panic!("fuzz {target}: seed {name}: {problem}"),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                panic!("fuzz {target}: seed {name} panicked: {message}");
            }
        }
    }
    let strategy = inputs(seeds.iter().map(|(_, s)| s.clone()).collect(), dictionary);
    let budget = Budget::from_env(cases);
    let mut done: u64 = 0;
    // The slowest case and its length: what to look at when a target slows
    // down (a parser that is quadratic somewhere).
    let slowest = std::cell::Cell::new((Duration::ZERO, 0));
    let mut last_report = Instant::now();
    loop {
        let batch = match budget {
            Budget::Cases(total) => {
                if done >= u64::from(total) {
                    break;
                }
                total
            }
            Budget::Time(limit) => {
                if started.elapsed() >= limit {
                    break;
                }
                500
            }
        };
        let mut runner = TestRunner::new(Config {
            cases: batch,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |input| {
            let case_started = Instant::now();
            let verdict = check(&input).map_err(TestCaseError::fail);
            let took = case_started.elapsed();
            if took > slowest.get().0 {
                slowest.set((took, input.len()));
            }
            verdict
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, input)) => panic!(
                "fuzz {target}: {reason}\n  input ({} bytes) hex: {}\n  as text: {:?}\n  \
                 keep it as a regression seed in {}",
                input.len(),
                hex(&input),
                String::from_utf8_lossy(&input),
                corpus_dir(target).display()
            ),
            Err(TestError::Abort(reason)) => panic!("fuzz {target}: aborted: {reason}"),
        }
        done += u64::from(batch);
        if matches!(budget, Budget::Time(_)) && last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            println!("fuzz {target}: {done} cases, {:.0?}", started.elapsed());
        }
    }
    let (took, len) = slowest.get();
    println!(
        "fuzz {target}: {} seeds and {done} generated cases in {:.2?}, no failure \
         (slowest case {took:.1?}, {len} bytes)",
        seeds.len(),
        started.elapsed()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "keep it as a regression seed")]
    fn a_panicking_parser_is_caught_and_its_input_printed() {
        // The seeds are shorter; mutations soon make longer inputs.
        fuzz("health_udp", &[], 2_000, |bytes| {
            assert!(bytes.len() <= 60, "a parser that cannot take 61 bytes");
            Ok(())
        });
    }

    #[test]
    fn mutations_stay_within_the_input_limit() {
        let seeds = vec![b"abc".to_vec()];
        let mut input = seeds[0].clone();
        for _ in 0..100 {
            apply(&mut input, &Mutation::Repeat(0, 64, 4095), &seeds, &[]);
        }
        assert_eq!(input.len(), MAX_INPUT);
    }
}
