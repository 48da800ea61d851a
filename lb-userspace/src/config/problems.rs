//! What a configuration problem is and how it is reported: the error type,
//! the collector the checks push into, the cap on how many are listed, and
//! the line of the text where each problem's field is written.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Field path, e.g. `services[0].backends[1].weight`.
    pub path: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid for the schema.
    #[error("{} problem(s):\n{}", .0.len(), ProblemList(.0))]
    Invalid(Vec<ConfigProblem>),
}

struct ProblemList<'a>(&'a [ConfigProblem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {problem}")?;
        }
        Ok(())
    }
}

/// Fills in the line of each problem whose field path is found in `text`
/// (for problems found outside the parser, such as the host's).
pub fn locate(text: &str, problems: &mut [ConfigProblem]) {
    for problem in problems {
        if problem.line.is_none() {
            problem.line = line_of(text, &problem.path);
        }
    }
}

/// Problems found so far.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    pub(super) fn push(&mut self, path: impl Into<String>, message: String) {
        self.0.push(ConfigProblem {
            path: path.into(),
            line: None,
            message,
        });
    }
}

/// The most problems listed; finding each one's line reads the whole text,
/// and nobody fixes a thousand problems from one listing.
const MAX_PROBLEMS: usize = 100;

/// Keeps the first [`MAX_PROBLEMS`] problems and says how many more there
/// were.
pub(super) fn cap(problems: &mut Vec<ConfigProblem>) {
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(ConfigProblem {
            path: String::new(),
            line: None,
            message: format!("and {more} more problem(s) not listed"),
        });
    }
}

/// The 1-based line where the field at `path` (`services[1].backends[0].port`)
/// is written, as far as it can be followed: block mappings and sequences are
/// walked by indentation; inside flow style (`{ ... }`, `[ ... ]`) the line
/// of the enclosing entry is the answer.
pub(super) fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut segments = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            segments.push(Segment::Key(&rest[..open]));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                segments.push(Segment::Index(rest[1..close].parse().ok()?));
                rest = &rest[close + 1..];
            }
        } else {
            segments.push(Segment::Key(rest));
        }
    }
    // (line index, the column where the current node's children start)
    let (mut at, mut indent): (Option<usize>, usize) = (None, 0);
    // A sequence item's first key sits on its own "- " line.
    let mut in_item = false;
    for segment in segments {
        let from = at.map_or(0, |line| if in_item { line } else { line + 1 });
        in_item = matches!(segment, Segment::Index(_));
        let found = match segment {
            Segment::Key(key) => {
                // Flow style on the current line: stay there.
                if at.is_some_and(|line| lines[line].contains('{')) {
                    return at.map(|line| line + 1);
                }
                lines.iter().enumerate().skip(from).find_map(|(i, line)| {
                    let content = line.trim_start().trim_start_matches("- ");
                    let column = line.len() - content.len();
                    (column >= indent && content.starts_with(&format!("{key}:")))
                        .then_some((i, column))
                })
            }
            Segment::Index(index) => {
                if at.is_some_and(|line| lines[line].contains('[')) {
                    return at.map(|line| line + 1);
                }
                // The sequence's items sit at the column of its first "- ".
                let column_of = |line: &str| line.len() - line.trim_start().len();
                let first = lines.iter().skip(from).find(|line| {
                    line.trim_start().starts_with("- ") && column_of(line) >= indent
                })?;
                let column = column_of(first);
                lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .take_while(|(_, line)| line.trim().is_empty() || column_of(line) >= column)
                    .filter(|(_, line)| {
                        line.trim_start().starts_with("- ") && column_of(line) == column
                    })
                    .nth(index)
                    .map(|(i, _)| (i, column + 2))
            }
        };
        let (line, column) = found?;
        at = Some(line);
        indent = column;
    }
    at.map(|line| line + 1)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `serde_yaml` appends " at line L column C"; the line is reported separately.
pub(super) fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::line_of;
    use crate::config::{Config, ConfigError};

    #[test]
    fn a_thousand_problems_are_listed_as_a_hundred_and_a_count() {
        let mut text = String::from("instance: a\ninterfaces: [{ name: lb0 }]\nservices:\n");
        for _ in 0..1000 {
            text += "  - { bogus: 1 }\n";
        }
        let Err(ConfigError::Invalid(problems)) = Config::parse(&text) else {
            panic!("a thousand bad services accepted");
        };
        assert_eq!(problems.len(), 101);
        assert!(
            problems[100].message.contains("900 more"),
            "{:?}",
            problems[100]
        );
    }

    #[test]
    fn semantic_problems_carry_their_line() {
        let text = "\
instance: edge1
interfaces:
  - name: eth0
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    forwarding: dsr
    backends:
      - address: 192.0.2.11
        port: 8080
      - { address: '2001:db8::1' }
";
        let ConfigError::Invalid(problems) = Config::parse(text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let lines: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.path.clone(), p.line)).collect();
        assert!(
            lines.contains(&("services[0].backends[0].port".into(), Some(12))),
            "{lines:?}"
        );
        assert!(
            lines.contains(&("services[0].backends[1].address".into(), Some(13))),
            "{lines:?}"
        );
        // A key on its item's own "- " line.
        assert_eq!(line_of(text, "services[0].name"), Some(5));
        assert_eq!(line_of(text, "services[0].backends[0].address"), Some(11));
        assert_eq!(line_of(text, "interfaces[0].name"), Some(3));
    }
}
