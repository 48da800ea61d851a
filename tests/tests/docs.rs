//! The operator documentation keeps up with the code: every verdict reason
//! the data plane counts (`lb stats`, `lb_verdicts_total`) is explained in
//! deploy/TROUBLESHOOTING.md's table, and the NAT default-route advice in
//! deploy/README.md names the gateway each example configuration uses.
//!
//! And the repository stands alone: the design document and the style guide
//! that comments cite are its own (docs/), every citation names a file in
//! the tree and a section that exists, and no tracked file points at a path
//! outside the repository.

use std::{
    collections::BTreeSet,
    path::{Component, Path, PathBuf},
    process::Command,
};

use lb_common::Reason;

const TROUBLESHOOTING: &str = include_str!("../../deploy/TROUBLESHOOTING.md");
const DEPLOY: &str = include_str!("../../deploy/README.md");

/// The table rows' first cells, e.g. "`drop_denied`, `drop_rate_limited`".
fn explained() -> Vec<String> {
    TROUBLESHOOTING
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(" |").next())
        .flat_map(|cell| cell.split(", "))
        .map(|name| name.trim_matches('`').to_owned())
        .collect()
}

#[test]
fn troubleshooting_explains_every_verdict_reason() {
    let explained = explained();
    let missing: Vec<&str> = Reason::ALL
        .iter()
        .map(|reason| reason.name())
        .filter(|name| {
            !explained.iter().any(|row| {
                row == name
                    || row
                        .strip_suffix('*')
                        .is_some_and(|prefix| name.starts_with(prefix))
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/TROUBLESHOOTING.md does not explain {missing:?}"
    );
}

#[test]
fn nat_gateway_advice_matches_the_examples() {
    let ha = include_str!("../../deploy/lb.ha-a.yaml");
    assert!(ha.contains("floating_ips: [192.0.2.254/24]"), "{ha}");
    assert!(
        DEPLOY.contains("ip route replace default via 192.0.2.254"),
        "deploy/README.md: the HA pair's NAT backends route via the floating IP"
    );
    let modes = include_str!("../../deploy/lb.modes.yaml");
    assert!(modes.contains("eth1 (192.0.2.1/24)"), "{modes}");
    assert!(
        DEPLOY.contains("ip route replace default via 192.0.2.1 "),
        "deploy/README.md: a single balancer's NAT backends route via its eth1"
    );
}

// The needles are spelt in pieces so that this file does not match itself.
const DESIGN: &str = concat!("DESIGN", ".md");
const STYLE: &str = concat!("STYLE", ".md");
const DESIGN_PATH: &str = concat!("docs/DESIGN", ".md");
const STYLE_PATH: &str = concat!("docs/STYLE", ".md");
/// Paths that name something outside the repository: the sibling
/// directory the design notes once lived in, and the machine's work tree.
const OUTSIDE: [&str; 2] = [concat!("..", "/shared"), concat!("/wo", "rk/")];

/// The workspace root (this crate is `tests/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The tracked files (`git ls-files`); without git (a source tarball), every
/// file under the root but `target/` and hidden directories.
fn tracked() -> Vec<PathBuf> {
    let root = root();
    if let Ok(output) = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
        && output.status.success()
    {
        return output
            .stdout
            .split(|byte| *byte == 0)
            .filter(|name| !name.is_empty())
            .map(|name| PathBuf::from(String::from_utf8_lossy(name).into_owned()))
            .collect();
    }
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(root.join(&dir)).expect("read the tree") {
            let entry = entry.expect("read the tree");
            let name = entry.file_name();
            let relative = dir.join(&name);
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                if name != "target" && !name.to_string_lossy().starts_with('.') {
                    pending.push(relative);
                }
            } else if file_type.is_file() {
                files.push(relative);
            }
        }
    }
    files
}

/// The tracked text files and their contents (binary files skipped).
fn texts() -> Vec<(PathBuf, String)> {
    let root = root();
    tracked()
        .into_iter()
        .filter_map(|path| {
            let bytes = std::fs::read(root.join(&path)).ok()?;
            let text = String::from_utf8(bytes).ok()?;
            Some((path, text))
        })
        .collect()
}

/// `a/b/../c` → `a/c`; `None` when `..` climbs out of the repository.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// The path-like text that ends at byte `end` of `line` (letters, digits,
/// `_`, `-`, `.` and `/`), e.g. `docs/DESIGN.md` in "(docs/DESIGN.md §4)".
fn path_ending_at(line: &str, end: usize) -> &str {
    let start = line[..end]
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || "_-./".contains(c)))
        .map_or(0, |at| at + 1);
    &line[start..end]
}

/// Whether the path `written` in `file` names `target`, read from the
/// repository root or from the citing file's directory.
fn resolves_to(file: &Path, written: &str, target: &str) -> bool {
    let from_root = normalise(Path::new(written));
    let from_file = normalise(&file.parent().unwrap_or(Path::new("")).join(written));
    [from_root, from_file]
        .into_iter()
        .flatten()
        .any(|path| path == Path::new(target))
}

#[test]
fn design_and_style_are_cited_inside_the_repository() {
    let mut wrong = Vec::new();
    for (path, text) in texts() {
        for (number, line) in text.lines().enumerate() {
            for (needle, target) in [(DESIGN, DESIGN_PATH), (STYLE, STYLE_PATH)] {
                for (at, _) in line.match_indices(needle) {
                    let written = path_ending_at(line, at + needle.len());
                    if !resolves_to(&path, written, target) {
                        wrong.push(format!("{}:{}: {line}", path.display(), number + 1));
                    }
                }
                // The name without its extension, before a section sign.
                let bare = format!("{} §", needle.trim_end_matches(".md"));
                if line.contains(&bare) {
                    wrong.push(format!("{}:{}: {line}", path.display(), number + 1));
                }
            }
            for outside in OUTSIDE {
                if line.contains(outside) {
                    wrong.push(format!("{}:{}: {line}", path.display(), number + 1));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cite {DESIGN_PATH} / {STYLE_PATH}, and no path outside the repository:\n{}",
        wrong.join("\n")
    );
}

/// The sections of a numbered document: `## 2. Data path` gives "2",
/// `### 2.3 Guard` gives "2.3".
fn sections(document: &str) -> BTreeSet<String> {
    document
        .lines()
        .filter_map(|line| {
            let heading = line
                .strip_prefix("## ")
                .or_else(|| line.strip_prefix("### "))?;
            let number = heading.split_whitespace().next()?.trim_end_matches('.');
            (!number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .then(|| number.to_owned())
        })
        .collect()
}

/// The section numbers cited right after byte `from` of `line`:
/// "§4", "§4, §5", "§2.3 and §5" (a trailing full stop is prose).
fn cited_sections(line: &str, from: usize) -> Vec<String> {
    let mut cited = Vec::new();
    let mut rest = &line[from..];
    loop {
        let trimmed = rest.trim_start();
        let Some(after) = trimmed.strip_prefix('§') else {
            break;
        };
        let length = after
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(after.len());
        cited.push(after[..length].trim_end_matches('.').to_owned());
        rest = &after[length..];
        if let Some(next) = rest
            .strip_prefix(",")
            .or_else(|| rest.strip_prefix(" and"))
            .or_else(|| rest.strip_prefix(" or"))
        {
            rest = next;
        } else {
            break;
        }
    }
    cited
}

#[test]
fn cited_sections_exist() {
    let root = root();
    let design = std::fs::read_to_string(root.join(DESIGN_PATH)).expect("read the design");
    let style = std::fs::read_to_string(root.join(STYLE_PATH)).expect("read the style guide");
    let design_sections = sections(&design);
    let style_sections = sections(&style);
    for section in ["1", "2", "2.3", "3", "4", "5", "6", "7", "7.4", "8"] {
        assert!(
            design_sections.contains(section),
            "{DESIGN_PATH} has no §{section}"
        );
    }
    assert!(
        style_sections.contains("18"),
        "{STYLE_PATH}: {style_sections:?}"
    );

    let mut missing = Vec::new();
    for (path, text) in texts() {
        let inside_design = path == Path::new(DESIGN_PATH);
        for (number, line) in text.lines().enumerate() {
            let mut cites: Vec<(&str, &BTreeSet<String>, String)> = Vec::new();
            for (needle, known) in [(DESIGN, &design_sections), (STYLE, &style_sections)] {
                for (at, _) in line.match_indices(needle) {
                    for section in cited_sections(line, at + needle.len()) {
                        cites.push((needle, known, section));
                    }
                }
            }
            // The design document's own "see §2.3".
            if inside_design && !line.starts_with('#') {
                for (at, _) in line.match_indices('§') {
                    let before = line[..at].trim_end();
                    if !before.ends_with(DESIGN) && !before.ends_with(STYLE) {
                        for section in cited_sections(line, at) {
                            cites.push((DESIGN, &design_sections, section));
                        }
                    }
                }
            }
            for (needle, known, section) in cites {
                if section.is_empty() || !known.contains(&section) {
                    missing.push(format!(
                        "{}:{}: {needle} §{section}: {line}",
                        path.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "sections that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn section_citations_are_read_as_written() {
    assert_eq!(cited_sections(" §4, §5): sync", 0), ["4", "5"]);
    assert_eq!(cited_sections(" §2.3.", 0), ["2.3"]);
    assert_eq!(cited_sections(" §2.3 and §5", 0), ["2.3", "5"]);
    assert_eq!(cited_sections(": see above", 0), Vec::<String>::new());
    let line = "(docs/DESIGN.md §4)";
    let end = line.find(".md").unwrap() + 3;
    assert_eq!(path_ending_at(line, end), "docs/DESIGN.md");
    let src = Path::new("lb/src/a.rs");
    assert!(resolves_to(src, DESIGN_PATH, DESIGN_PATH));
    assert!(resolves_to(Path::new(STYLE_PATH), DESIGN, DESIGN_PATH));
    let up = format!("../{DESIGN_PATH}");
    assert!(resolves_to(Path::new("deploy/README.md"), &up, DESIGN_PATH));
    assert!(!resolves_to(src, DESIGN, DESIGN_PATH));
    let outside = format!("{}/{DESIGN}", OUTSIDE[0]);
    assert!(!resolves_to(src, &outside, DESIGN_PATH));
    let mut sections = sections("## 1. Layout\n### 2.3 Guard\n## Notes\n");
    assert!(sections.remove("1") && sections.remove("2.3") && sections.is_empty());
}

/// docs/BENCHMARKS.md is what `results/` says (`cargo xtask bench`
/// regenerates it; `LB_WRITE_BENCHMARKS=1` on this test does too).
#[test]
fn the_benchmarks_page_is_generated_from_results() {
    let root = root();
    let page = lb_tests::benchdoc::render(&root.join("results"));
    let path = root.join(lb_tests::benchdoc::PAGE);
    if std::env::var_os("LB_WRITE_BENCHMARKS").is_some() {
        std::fs::write(&path, &page).expect("write docs/BENCHMARKS.md");
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == page,
        "docs/BENCHMARKS.md is not what results/ says: run `cargo xtask bench`, or \
         `LB_WRITE_BENCHMARKS=1 cargo test -p lb-tests --test docs benchmarks`"
    );
}

/// Every measured figure in the README is on a line that names the report
/// in `results/` it comes from (the rest of the figures live, generated, in
/// docs/BENCHMARKS.md).
#[test]
fn every_figure_in_the_readme_names_its_results_file() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let units = ["ms", "µs", "ns", "Mpps", "%", "conn/s", "requests/s", "MiB"];
    let mut untraced = Vec::new();
    for (n, line) in readme.lines().enumerate() {
        let bytes = line.as_bytes();
        let figure = units.iter().any(|unit| {
            line.match_indices(unit).any(|(at, _)| {
                let before = line[..at].trim_end();
                let after = &bytes[at + unit.len()..];
                before.ends_with(|c: char| c.is_ascii_digit())
                    && after.first().is_none_or(|c| !c.is_ascii_alphanumeric())
            })
        });
        if figure && !line.contains("results/") {
            untraced.push(format!("README.md:{}: {line}", n + 1));
        }
    }
    assert!(
        untraced.is_empty(),
        "figures without their results/ file:\n{}",
        untraced.join("\n")
    );
}
