//! `lb import keepalived FILE`: an lb configuration written from a
//! keepalived.conf, with a note for every directive that could not be
//! carried over and why (docs/IMPORT.md lists them all).
//!
//! Three pure steps, no I/O but through [`Files`]:
//! - `parse`: the text (and what it includes) into statements;
//! - `keepalived`: the statements into lb's services, VRRP instances and
//!   sync section, noting what does not map;
//! - `emit`: that draft as YAML, the input's comments kept before the
//!   services they described.
//!
//! The YAML is then validated by [`Config::parse`], as `lb check` does;
//! a problem found there is reported at the keepalived line it came from.

mod emit;
mod keepalived;
mod parse;

use std::{fmt, io, path::Path, path::PathBuf};

pub use parse::{Files, Position, Statement};

use crate::config::{Config, ConfigError};

/// A directive not carried over (or carried over differently), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Where it is written.
    pub at: Position,
    /// The directive, as written (keyword and arguments).
    pub directive: String,
    /// What lb does instead, or why it is left out.
    pub note: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.directive, self.note)
    }
}

/// A problem `lb check` finds in the imported configuration, placed at
/// the keepalived statement it came from where one is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The keepalived statement the problem comes from.
    pub at: Option<Position>,
    /// The field of the lb configuration (`services[1].backends[0]`).
    pub path: String,
    /// `lb check`'s message.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What the import produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    /// The lb configuration, YAML, valid for `lb check`.
    pub yaml: String,
    /// What was not carried over, in the input's order.
    pub notes: Vec<Note>,
}

/// Why there is no configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The text is not keepalived's syntax.
    #[error("{at}: {message}")]
    Syntax {
        /// Where.
        at: Position,
        /// What is wrong.
        message: String,
    },
    /// A file (the one given, or one an `include` names) cannot be read.
    #[error("{}cannot read {}: {source}", from.as_ref().map_or(String::new(), |at| format!("{at}: include {}: ", path.display())), path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The `include` that names it (none for the file given).
        from: Option<Position>,
        /// The error.
        source: io::Error,
    },
    /// The result does not pass `lb check`.
    #[error(
        "the imported configuration does not pass lb check:\n{}",
        list(problems)
    )]
    Invalid {
        /// Each problem.
        problems: Vec<Refusal>,
        /// The configuration that was refused.
        yaml: String,
        /// What was not carried over (often the reason).
        notes: Vec<Note>,
    },
    /// Nothing that lb can run was left.
    #[error(
        "nothing to import: no virtual_server or vrrp_instance could be carried over (the \
         notes say why)"
    )]
    Nothing {
        /// Why each was left out.
        notes: Vec<Note>,
    },
}

fn list(problems: &[Refusal]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the command line passes on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `instance:`; default: keepalived's `router_id`, made a valid name.
    pub instance: Option<String>,
    /// `interfaces:`; default: the VRRP instances' interfaces.
    pub interfaces: Vec<String>,
    /// keepalived's `-i`: which `@ID` lines to keep.
    pub config_id: Option<String>,
}

/// Imports the keepalived.conf at `root`, read through `files`.
pub fn keepalived(
    root: &Path,
    files: &dyn Files,
    options: &Options,
) -> Result<Import, ImportError> {
    let mut notes = Vec::new();
    let statements = parse::parse(root, files, options.config_id.as_deref(), &mut notes)?;
    let draft = keepalived::translate(root, &statements, options, &mut notes)?;
    in_order(&statements, &mut notes);
    if draft.services.is_empty() && draft.ha.is_none() {
        return Err(ImportError::Nothing { notes });
    }
    let yaml = emit::yaml(&draft, root);
    match Config::parse(&yaml) {
        Ok(config) => {
            // What lb check would warn about, where it comes from.
            for warning in config.warnings() {
                if let Some(at) = draft.source_of(&warning.path) {
                    notes.push(Note {
                        at,
                        directive: format!("(lb check warns about {})", warning.path),
                        note: warning.message,
                    });
                }
            }
            in_order(&statements, &mut notes);
            Ok(Import { yaml, notes })
        }
        Err(error) => {
            let problems = match error {
                ConfigError::Invalid(problems) => problems
                    .into_iter()
                    .map(|p| Refusal {
                        at: draft.source_of(&p.path),
                        path: p.path,
                        message: p.message,
                    })
                    .collect(),
                other => vec![Refusal {
                    at: None,
                    path: String::new(),
                    message: other.to_string(),
                }],
            };
            Err(ImportError::Invalid {
                problems,
                yaml,
                notes,
            })
        }
    }
}

/// Notes in the order of the input: by file (the root, then each file as
/// its first statement comes), then by line.
fn in_order(statements: &[Statement], notes: &mut [Note]) {
    fn files<'a>(statements: &'a [Statement], out: &mut Vec<&'a Path>) {
        for statement in statements {
            if !out.contains(&&*statement.at.file) {
                out.push(&statement.at.file);
            }
            files(statement.children(), out);
        }
    }
    let mut order = Vec::new();
    files(statements, &mut order);
    notes.sort_by_key(|note| {
        (
            order
                .iter()
                .position(|f| *f == &*note.at.file)
                .unwrap_or(usize::MAX),
            note.at.line,
        )
    });
}

#[cfg(test)]
mod tests;
