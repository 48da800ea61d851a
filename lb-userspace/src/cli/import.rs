//! `lb import keepalived FILE`: reads the files, prints the configuration
//! (stdout) and the notes (stderr), or one JSON object with both. The
//! translation itself is [`crate::import`].

use std::{io, path::Path, path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::Output;
use crate::import::{self, Files, ImportError, Note, Options};

/// `lb import`'s sources.
#[derive(Debug, Subcommand)]
pub enum Source {
    /// Translate a keepalived.conf (and what it includes) into lb's YAML.
    ///
    /// Prints the configuration on stdout and, on stderr, every directive
    /// that could not be carried over (or was carried over differently),
    /// with its file and line and what lb does instead. The result passes
    /// `lb check`, or nothing is printed on stdout and the exit status is
    /// 1, with lb check's problems placed at the keepalived lines they come
    /// from.
    #[command(
        after_help = "Example:\n  lb import keepalived /etc/keepalived/keepalived.conf > /etc/lb/lb.yaml\n  \
                      lb import keepalived keepalived.conf --interface eth0 --interface eth1 --instance edge1\n  \
                      lb import keepalived keepalived.conf --output json"
    )]
    Keepalived {
        /// The keepalived.conf to read.
        file: PathBuf,
        /// An interface traffic arrives or leaves by (repeatable); default:
        /// the VRRP instances' interfaces.
        #[arg(long, value_name = "NAME")]
        interface: Vec<String>,
        /// The instance name; default: `router_id` in `global_defs`.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// Keep the `@ID` lines of this configuration id (keepalived -i ID).
        #[arg(long, value_name = "ID")]
        config_id: Option<String>,
    },
}

/// The file system, as the importer reads it.
struct Disk;

impl Files for Disk {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<(String, bool)>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            // Follows symbolic links, as keepalived's glob does.
            let is_dir = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir());
            entries.push((entry.file_name().to_string_lossy().into_owned(), is_dir));
        }
        Ok(entries)
    }
}

/// Runs `lb import`; exit 0 with a configuration, 1 without.
pub(super) fn run(source: &Source, output: Output) -> ExitCode {
    let Source::Keepalived {
        file,
        interface,
        instance,
        config_id,
    } = source;
    let options = Options {
        instance: instance.clone(),
        interfaces: interface.clone(),
        config_id: config_id.clone(),
    };
    match import::keepalived(file, &Disk, &options) {
        Ok(imported) => {
            match output {
                Output::Human => {
                    print!("{}", imported.yaml);
                    for note in &imported.notes {
                        eprintln!("note: {note}");
                    }
                    eprintln!(
                        "{}: imported; {} note(s) above",
                        file.display(),
                        imported.notes.len()
                    );
                }
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"config": imported.yaml,
                                       "notes": notes_json(&imported.notes)})
                ),
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let (notes, problems) = match &error {
                ImportError::Invalid {
                    notes, problems, ..
                } => (notes.as_slice(), problems.as_slice()),
                ImportError::Nothing { notes } => (notes.as_slice(), &[][..]),
                _ => (&[][..], &[][..]),
            };
            match output {
                Output::Human => {
                    for note in notes {
                        eprintln!("note: {note}");
                    }
                    eprintln!("error: {error}");
                }
                Output::Json => {
                    let problems: Vec<_> = problems
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "file": p.at.as_ref().map(|at| at.file.display().to_string()),
                                "line": p.at.as_ref().map(|at| at.line),
                                "path": p.path,
                                "message": p.message,
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"error": error.to_string(), "problems": problems,
                                           "notes": notes_json(notes)})
                    );
                }
            }
            ExitCode::from(1)
        }
    }
}

fn notes_json(notes: &[Note]) -> serde_json::Value {
    notes
        .iter()
        .map(|n| {
            serde_json::json!({"file": n.at.file.display().to_string(), "line": n.at.line,
                               "directive": n.directive, "note": n.note})
        })
        .collect()
}
