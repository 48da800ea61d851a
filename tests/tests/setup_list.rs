//! Every program the tests start is installed by `cargo xtask setup`, so
//! `git clone` + `cargo xtask test` passes on a fresh Debian machine, not only
//! on one where a benchmark happened to install `nft` first.
//!
//! The check reads the test sources (`tests/src`, `tests/tests`,
//! `tests/examples`, `tests/benches`) and finds the programs they start:
//!
//! - the program argument of `Command::new`, and of every helper that takes
//!   a `program` parameter and starts a process with it (found in the sources
//!   themselves: `sh`, `Netns::exec` / `command` / `spawn`, ...), when that
//!   argument is a string literal;
//! - the program a wrapper runs (`nsenter ... -- X`, `sh -c "X ..."`), when the
//!   call names it literally, or else from [`WRAPPED`];
//! - the first word of an `exec` health check (`command: [X, ...]`) in a
//!   configuration a test writes, since `lb run` starts it.
//!
//! A program named through a variable is not seen (the project's own `lb` and
//! demo binaries are): name external programs literally at the call.
//! Each program is mapped to its Debian package by [`PROVIDERS`] (an unknown
//! program fails the check, saying what to add), and the package must be in
//! setup's `PACKAGES` (xtask/src/setup.rs).
//!
//! Benchmark-only code is told apart by where it lives: `tests/benches/` and
//! the harness modules only the benchmarks use ([`BENCH_ONLY`]: the
//! end-to-end benchmark, which starts `wrk`, `nginx`, `haproxy` and `nft`). Their
//! programs may come from `BENCH_PACKAGES` (xtask/src/main.rs), which
//! `cargo xtask bench` installs. That a module is bench-only is checked too:
//! no test, example or other harness module names it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Program → the Debian package that installs it.
const PROVIDERS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("git", "git"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("runuser", "util-linux"),
    ("sysctl", "procps"),
    ("keepalived", "keepalived"),
    ("bird", "bird2"),
    ("birdc", "bird2"),
    ("nft", "nftables"),
    ("man", "man-db"),
    ("lintian", "lintian"),
    ("promtool", "prometheus"),
    ("systemd-analyze", "systemd"),
    ("chromium", "chromium"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
];

/// Programs of Debian's Essential packages, present on every Debian system
/// (`apt-get` cannot even remove them without `--allow-remove-essential`),
/// so setup needs not list them.
const ESSENTIAL: &[(&str, &str)] = &[
    ("sh", "dash"),
    ("test", "coreutils"),
    ("sleep", "coreutils"),
    ("timeout", "coreutils"),
    ("true", "coreutils"),
    ("false", "coreutils"),
    ("dpkg", "dpkg"),
    ("dpkg-query", "dpkg"),
    ("dpkg-deb", "dpkg"),
];

/// The project's own programs, started by a path the tests name literally:
/// the `lb` the package test installs.
const OWN: &[&str] = &["/usr/sbin/lb"];

/// Programs that run another program given as their arguments.
const WRAPPERS: &[&str] = &["nsenter", "setpriv", "runuser", "timeout", "sh", "env"];

/// Wrapper calls whose program the scan cannot read at the call, with what
/// they run: (file, wrapper, programs). An empty list says the program is
/// checked elsewhere (at the helper's own calls).
const WRAPPED: &[(&str, &str, &[&str])] = &[
    // `Netns::command`'s `nsenter --net=... -- PROGRAM`, built over two
    // statements: its `program`, checked where the helpers are called.
    ("tests/src/netns.rs", "nsenter", &[]),
    // `Topology::wrk`: `timeout SECONDS wrk ...`, the arguments built first.
    ("tests/src/endtoend.rs", "timeout", &["wrk"]),
    // `spawn_logged`'s `sh -c 'exec "$0" "$@" >>log'`: its `program`,
    // checked where `spawn_logged` is called.
    ("tests/src/endtoend.rs", "sh", &[]),
];

/// Harness modules that only the benchmarks use.
const BENCH_ONLY: &[&str] = &["endtoend"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// A token of Rust source, comments dropped.
#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A string literal's contents (escapes kept as written).
    Str(String),
    /// An identifier, keyword or number.
    Word(String),
    Punct(char),
}

/// Splits Rust source into tokens: enough of the grammar to find calls and
/// their string arguments (comments, raw strings, char literals and lifetimes
/// are told apart, so a quote in one of them does not start a string).
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let start = i + 1;
            i = start;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            out.push(Token::Str(
                chars[start..i.min(chars.len())].iter().collect(),
            ));
            i += 1;
        } else if let Some((text, end)) = raw_string(&chars, i) {
            out.push(Token::Str(text));
            i = end;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if next == Some('\\') {
                // Past the backslash and the escaped character ('\'').
                i += 3;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // b"...": a byte string is a string here.
            if word == "b" && chars.get(i) == Some(&'"') {
                continue;
            }
            out.push(Token::Word(word));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// `r"..."`, `r#"..."#`, `br#"..."#` at `i`: its contents and the index past it.
fn raw_string(chars: &[char], i: usize) -> Option<(String, usize)> {
    let mut j = i;
    if chars.get(j) == Some(&'b') {
        j += 1;
    }
    if chars.get(j) != Some(&'r') || (j > 0 && i > 0 && is_word_char(chars[i - 1])) {
        return None;
    }
    j += 1;
    let hashes = chars[j..].iter().take_while(|&&c| c == '#').count();
    j += hashes;
    if chars.get(j) != Some(&'"') {
        return None;
    }
    let start = j + 1;
    let mut k = start;
    while k < chars.len() {
        if chars[k] == '"'
            && chars[k + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some((chars[start..k].iter().collect(), k + 1 + hashes));
        }
        k += 1;
    }
    None
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn is_word(token: Option<&Token>, word: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w == word)
}

fn is_punct(token: Option<&Token>, c: char) -> bool {
    token == Some(&Token::Punct(c))
}

/// The index of the bracket closing the one at `open`.
fn closing(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (i, token) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// The arguments of the call whose `(` is at `open`, split at top-level commas.
fn arguments(tokens: &[Token], open: usize) -> Vec<&[Token]> {
    let close = closing(tokens, open);
    let mut args = Vec::new();
    let mut depth = 0i32;
    let mut start = open + 1;
    for i in open + 1..close {
        match &tokens[i] {
            Token::Punct('(' | '[' | '{') => depth += 1,
            Token::Punct(')' | ']' | '}') => depth -= 1,
            Token::Punct(',') if depth == 0 => {
                args.push(&tokens[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < close {
        args.push(&tokens[start..close]);
    }
    args
}

/// The helpers that start a process: name → which argument is the program.
/// `Command::new` (argument 0) and every function with a `program` parameter
/// whose body starts a process.
fn runners(files: &[(String, Vec<Token>)]) -> BTreeMap<String, usize> {
    let mut functions = Vec::new();
    for (_, tokens) in files {
        for i in 0..tokens.len() {
            if !is_word(tokens.get(i), "fn") || !is_punct(tokens.get(i + 2), '(') {
                continue;
            }
            let Some(Token::Word(name)) = tokens.get(i + 1) else {
                continue;
            };
            let params: Vec<&[Token]> = arguments(tokens, i + 2)
                .into_iter()
                .filter(|param| !param.iter().any(|t| is_word(Some(t), "self")))
                .collect();
            let Some(index) = params
                .iter()
                .position(|param| is_word(param.first(), "program"))
            else {
                continue;
            };
            let params_end = closing(tokens, i + 2);
            let Some(body_open) =
                (params_end..tokens.len()).find(|&j| is_punct(tokens.get(j), '{'))
            else {
                continue;
            };
            let body = &tokens[body_open..=closing(tokens, body_open).min(tokens.len() - 1)];
            functions.push((name.clone(), index, body));
        }
    }
    let mut runners = BTreeMap::from([("Command::new".to_owned(), 0)]);
    loop {
        let before = runners.len();
        for (name, index, body) in &functions {
            if !runners.contains_key(name) && !calls(body, &runners).is_empty() {
                runners.insert(name.clone(), *index);
            }
        }
        if runners.len() == before {
            return runners;
        }
    }
}

/// Calls of runners in `tokens`: (index of the `(`, the program argument).
fn calls<'a>(tokens: &'a [Token], runners: &BTreeMap<String, usize>) -> Vec<(usize, &'a [Token])> {
    let mut found = Vec::new();
    for i in 0..tokens.len() {
        if !is_punct(tokens.get(i + 1), '(') {
            continue;
        }
        let Some(Token::Word(name)) = tokens.get(i) else {
            continue;
        };
        if i > 0 && is_word(tokens.get(i - 1), "fn") {
            continue;
        }
        let key = if name == "new"
            && i >= 3
            && is_punct(tokens.get(i - 1), ':')
            && is_word(tokens.get(i - 3), "Command")
        {
            "Command::new"
        } else {
            name.as_str()
        };
        let Some(&index) = runners.get(key) else {
            continue;
        };
        if let Some(argument) = arguments(tokens, i + 1).get(index) {
            found.push((i + 1, *argument));
        }
    }
    found
}

/// What a wrapper call at `open` runs, as far as the call says it literally:
/// `Some(program)`, `Some("")` for a program given by an expression (lb
/// itself, a helper's parameter), `None` if the call does not say.
fn wrapped(tokens: &[Token], open: usize, wrapper: &str) -> Option<String> {
    // The statement: the call and its builder chain, up to `;`.
    let mut end = open;
    while end < tokens.len() && !matches!(tokens.get(end), Some(Token::Punct(';' | '{' | '}'))) {
        end = if is_punct(tokens.get(end), '(') {
            closing(tokens, end) + 1
        } else {
            end + 1
        };
    }
    let statement = &tokens[open..end.min(tokens.len())];
    let skip = |t: &Token| {
        matches!(t, Token::Punct(',' | ')' | '(' | '[' | ']' | '&' | '.'))
            || matches!(t, Token::Word(w) if w == "arg" || w == "args")
    };
    let after = |marker: &str| {
        let at = statement
            .iter()
            .position(|t| *t == Token::Str(marker.into()))?;
        match statement[at + 1..].iter().find(|t| !skip(t))? {
            Token::Str(text) => Some(text.clone()),
            _ => Some(String::new()),
        }
    };
    match wrapper {
        "sh" => after("-c").map(|script| {
            let mut words = script.split_whitespace().filter(|w| *w != "exec");
            let first = words.next().unwrap_or_default();
            if first.starts_with('"') || first.starts_with('$') {
                String::new()
            } else {
                first.to_owned()
            }
        }),
        "timeout" | "env" => statement
            .iter()
            .filter_map(|t| match t {
                Token::Str(text) => Some(text),
                _ => None,
            })
            .skip(1)
            .find(|text| {
                !text.starts_with('-')
                    && !text.contains('=')
                    && !text.starts_with(|c: char| c.is_ascii_digit())
            })
            .cloned(),
        _ => after("--"),
    }
}

/// A program found in a file, where.
#[derive(Debug)]
struct Started {
    program: String,
    file: String,
    how: &'static str,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every test source, as (path relative to the root, tokens).
fn sources() -> Vec<(String, Vec<Token>)> {
    let root = root();
    let mut paths = Vec::new();
    for dir in [
        "tests/src",
        "tests/tests",
        "tests/examples",
        "tests/benches",
    ] {
        rust_files(&root.join(dir), &mut paths);
    }
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).expect("read a test source");
            let relative = path.strip_prefix(&root).expect("under the root");
            (relative.display().to_string(), tokens(&text))
        })
        .collect()
}

/// The programs the given sources start (see the module doc), and the wrapper
/// calls whose program the scan could not read and [`WRAPPED`] does not list.
fn started(files: &[(String, Vec<Token>)]) -> (Vec<Started>, Vec<String>) {
    let runners = runners(files);
    let mut found = Vec::new();
    let mut unreadable = Vec::new();
    for (file, tokens) in files {
        let mut add = |program: String, how| {
            if !program.is_empty() {
                found.push(Started {
                    program,
                    file: file.clone(),
                    how,
                });
            }
        };
        for (open, argument) in calls(tokens, &runners) {
            let [Token::Str(program)] = argument else {
                continue;
            };
            add(program.clone(), "started");
            if !WRAPPERS.contains(&program.as_str()) {
                continue;
            }
            if let Some(inner) = wrapped(tokens, open, program) {
                add(inner, "wrapped");
            } else if let Some((_, _, inner)) =
                WRAPPED.iter().find(|(f, w, _)| f == file && w == program)
            {
                for inner in *inner {
                    add((*inner).to_owned(), "wrapped (WRAPPED)");
                }
            } else {
                unreadable.push(format!("{file}: {program}"));
            }
        }
        for token in tokens {
            let Token::Str(text) = token else { continue };
            for (at, _) in text.match_indices("command: [") {
                let rest = &text[at + "command: [".len()..];
                let word = rest
                    .split(|c: char| c == ',' || c == ']' || c.is_whitespace())
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"');
                add(word.to_owned(), "exec health check");
            }
        }
    }
    (found, unreadable)
}

/// The string literals of the `const NAME` in `file` (relative to the root).
fn const_strings(file: &str, name: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(file)).expect("read xtask source");
    let tokens = tokens(&text);
    let start = (0..tokens.len())
        .find(|&i| is_word(tokens.get(i), "const") && is_word(tokens.get(i + 1), name))
        .unwrap_or_else(|| panic!("no const {name} in {file}"));
    tokens[start..]
        .iter()
        .take_while(|t| !is_punct(Some(t), ';'))
        .filter_map(|t| match t {
            Token::Str(text) => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// Whether `file` is benchmark-only code.
fn bench_only(file: &str) -> bool {
    file.starts_with("tests/benches/")
        || BENCH_ONLY
            .iter()
            .any(|module| file == format!("tests/src/{module}.rs"))
}

#[test]
fn every_program_the_tests_start_is_installed_by_setup() {
    let files = sources();
    let setup = const_strings("xtask/src/setup.rs", "PACKAGES");
    let bench = const_strings("xtask/src/main.rs", "BENCH_PACKAGES");
    let (found, unreadable) = started(&files);
    assert!(
        unreadable.is_empty(),
        "these wrapper calls run a program the check cannot read; name it at the call \
         or list it in WRAPPED: {unreadable:?}"
    );
    let mut problems = Vec::new();
    for start in found.iter().filter(|s| !OWN.contains(&s.program.as_str())) {
        let package = PROVIDERS
            .iter()
            .chain(ESSENTIAL)
            .find(|(program, _)| *program == start.program)
            .map(|(_, package)| *package);
        let Some(package) = package else {
            problems.push(format!(
                "{} ({}, {}): unknown program; add its Debian package to PACKAGES in \
                 xtask/src/setup.rs and the pair to PROVIDERS here",
                start.program, start.file, start.how
            ));
            continue;
        };
        let essential = ESSENTIAL.iter().any(|(p, _)| *p == start.program);
        let listed =
            setup.contains(package) || (bench_only(&start.file) && bench.contains(package));
        if !essential && !listed {
            problems.push(format!(
                "{} ({}, {}): its package {package} is not in PACKAGES in xtask/src/setup.rs",
                start.program, start.file, start.how
            ));
        }
    }
    problems.sort();
    problems.dedup();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The scan sees what the harness is known to start: a scan that found
    // nothing would pass the check above without checking anything.
    let programs: BTreeSet<&str> = found.iter().map(|s| s.program.as_str()).collect();
    for expected in [
        "ip",
        "ethtool",
        "nsenter",
        "sysctl",
        "keepalived",
        "bird",
        "birdc",
        "nft",
    ] {
        assert!(
            programs.contains(expected),
            "the scan missed {expected}: {programs:?}"
        );
    }
    println!("programs the tests start: {programs:?}");
}

#[test]
fn bench_only_modules_are_used_by_the_benchmarks_alone() {
    for (file, tokens) in sources() {
        if bench_only(&file) || file == "tests/src/lib.rs" {
            continue;
        }
        for module in BENCH_ONLY {
            assert!(
                !tokens.iter().any(|t| is_word(Some(t), module)),
                "{file} uses {module}, which this check takes for benchmark-only (its \
                 programs may come from BENCH_PACKAGES): move the programs to setup's \
                 PACKAGES and drop {module} from BENCH_ONLY"
            );
        }
    }
}

#[test]
fn the_scan_finds_programs_started_through_helpers_and_wrappers() {
    let source = r#"
        // Command::new("commented")
        fn run_it(ns: &Netns, program: &str, args: &[&str]) -> Output {
            ns.exec(program, args)
        }
        fn name(program: &'static str) -> u32 { program.len() }
        fn f(ns: &Netns) {
            let _ = Command::new("nsenter").arg("--net=x").arg("--").arg("nft").output();
            let _ = Command::new("nsenter").arg("--").arg(lb_binary()).output();
            run_it(ns, "birdc", &[]);
            name("lb_balance");
            ns.exec("sh", &["-c", "exec wrk -t1"]);
            let text = "health_check: { kind: exec, command: [test, -e, x] }";
            let c = '"';
        }
        impl Netns {
            fn exec(&self, program: &str, args: &[&str]) -> Output {
                Command::new(program).args(args).output().unwrap()
            }
        }
    "#;
    let files = vec![("t.rs".to_owned(), tokens(source))];
    let (found, unreadable) = started(&files);
    let programs: Vec<&str> = found.iter().map(|s| s.program.as_str()).collect();
    assert_eq!(
        programs,
        ["nsenter", "nft", "nsenter", "birdc", "sh", "wrk", "test"],
        "{found:?}"
    );
    assert!(unreadable.is_empty(), "{unreadable:?}");
}
