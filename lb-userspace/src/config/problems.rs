//! What a configuration problem is and how it is reported: the error type,
//! the collector the checks push into, the cap on how many are listed, and
//! the line and column of the text where each problem's field is written.

use std::fmt;
use std::path::PathBuf;

use super::yaml::Positions;

/// One problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Field path, e.g. `services[0].backends[1].weight`.
    pub path: String,
    /// 1-based line, where known.
    pub line: Option<usize>,
    /// 1-based column (in characters), where known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}: ")?,
            (Some(line), None) => write!(f, "line {line}: ")?,
            _ => {}
        }
        // A problem of the whole file (a syntax error) has no path.
        match self.path.as_str() {
            "" if self.line.is_some() => write!(f, "{}", self.message),
            path => write!(f, "{path}: {}", self.message),
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

/// Fills in the line and column of each problem whose field path is found
/// in `text` (for problems found outside the parser, such as the host's).
pub fn locate(text: &str, problems: &mut [ConfigProblem]) {
    if problems
        .iter()
        .all(|p| p.line.is_some() || p.path.is_empty())
    {
        return;
    }
    let positions = Positions::new(text);
    for problem in problems {
        if problem.line.is_none()
            && let Some((line, column)) = positions.of(&problem.path)
        {
            problem.line = Some(line);
            problem.column = Some(column);
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
            column: None,
            message,
        });
    }
}

/// The most problems listed; nobody fixes a thousand problems from one listing.
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
            column: None,
            message: format!("and {more} more problem(s) not listed"),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::config::yaml::Positions;
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
        let positions = Positions::new(text);
        assert_eq!(positions.of("services[0].name"), Some((5, 5)));
        assert_eq!(
            positions.of("services[0].backends[0].address"),
            Some((11, 9))
        );
        assert_eq!(positions.of("interfaces[0].name"), Some((3, 5)));
        assert_eq!(positions.of("services[0].backends[1]"), Some((13, 9)));
    }
}
