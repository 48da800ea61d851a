//! keepalived.conf read into a tree of statements: a keyword, its
//! arguments, the comment block written right before it and, for a block,
//! the statements inside its braces.
//!
//! The text is read as keepalived reads it: line by line, `#` and `!`
//! starting a comment (at the start of a word), `"` quoting a word with
//! spaces, `{` and `}` standing alone or stuck to a word, a block's `{` on
//! the keyword's line or the next one, `include GLOB` spliced in where it
//! stands (the glob relative to the including file's directory), and
//! `@ID` lines kept only for the configuration id given (`keepalived -i`).
//! Files are read through [`Files`], so this module does no I/O of its own.

use std::{fmt, io, path::Path, path::PathBuf, sync::Arc};

use super::{ImportError, Note};

/// Where something is written: a file and a line (from 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The file, as it was named (the root as given, includes joined to
    /// their including file's directory).
    pub file: Arc<Path>,
    /// The line, from 1.
    pub line: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One statement: `keyword args...`, with its block if it opens one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The keyword and its arguments (quotes removed).
    pub words: Vec<String>,
    /// Where the keyword is written.
    pub at: Position,
    /// The comment lines right before it (no blank line between), without
    /// their `#` / `!`.
    pub comments: Vec<String>,
    /// The statements between its braces, if it has any.
    pub block: Option<Vec<Statement>>,
}

impl Statement {
    /// The keyword.
    pub fn keyword(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    /// The arguments after the keyword.
    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or_default()
    }

    /// The block's statements (none for a plain statement).
    pub fn children(&self) -> &[Statement] {
        self.block.as_deref().unwrap_or_default()
    }
}

/// What the parser reads files through: the command line passes the file
/// system, tests a map.
pub trait Files {
    /// The text of `path`.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// The entries of directory `dir`: name, and whether it is a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<(String, bool)>>;
}

/// Deepest `include` chain (keepalived's own limit is of this order); a
/// deeper one is most likely a file including itself.
const MAX_INCLUDE_DEPTH: usize = 32;

/// Most files read in all (a file included twice at each level would
/// otherwise be read 2^32 times).
const MAX_FILES: usize = 1024;

/// Deepest nesting of blocks; keepalived's grammar needs four.
const MAX_BLOCK_DEPTH: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Word(String),
    Open,
    Close,
    Newline,
    Blank,
    Comment(String),
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    at: Position,
}

/// Reads `root` and the files it includes into statements. `config_id`
/// selects the `@ID` lines (none: every `@ID` line is left out, `@^ID`
/// lines kept); each line left out is noted.
pub fn parse(
    root: &Path,
    files: &dyn Files,
    config_id: Option<&str>,
    notes: &mut Vec<Note>,
) -> Result<Vec<Statement>, ImportError> {
    let mut lexer = Lexer {
        files,
        config_id,
        notes,
        tokens: Vec::new(),
        read: 1,
    };
    let text = files.read(root).map_err(|source| ImportError::Read {
        path: root.to_path_buf(),
        from: None,
        source,
    })?;
    lexer.lex(&Arc::from(root), &text, 0)?;
    let mut at = 0;
    let tokens = lexer.tokens;
    block(&tokens, &mut at, None, 0)
}

struct Lexer<'a> {
    files: &'a dyn Files,
    config_id: Option<&'a str>,
    notes: &'a mut Vec<Note>,
    tokens: Vec<Token>,
    read: usize,
}

impl Lexer<'_> {
    fn lex(&mut self, file: &Arc<Path>, text: &str, depth: usize) -> Result<(), ImportError> {
        for (number, line) in text.lines().enumerate() {
            let at = Position {
                file: Arc::clone(file),
                line: u32::try_from(number + 1).unwrap_or(u32::MAX),
            };
            let mut line = line.trim();
            if line.is_empty() {
                self.push(Kind::Blank, &at);
                continue;
            }
            if let Some(rest) = line.strip_prefix('@') {
                let (id, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let (negated, id) = id.strip_prefix('^').map_or((false, id), |id| (true, id));
                let matches = self.config_id == Some(id);
                if matches == negated {
                    self.notes.push(Note {
                        at: at.clone(),
                        directive: format!("@{}{id}", if negated { "^" } else { "" }),
                        note: format!(
                            "line left out: it is for configuration id {}{id:?} (keepalived -i){}",
                            if negated { "other than " } else { "" },
                            if self.config_id.is_none() {
                                "; give --config-id to import one balancer's lines"
                            } else {
                                ""
                            }
                        ),
                    });
                    continue;
                }
                line = rest.trim();
            }
            if line.starts_with('$') {
                return Err(ImportError::Syntax {
                    at,
                    message: "keepalived parameters ($NAME) are not supported: write their \
                              values out before importing"
                        .into(),
                });
            }
            if let Some(comment) = line.strip_prefix(['#', '!']) {
                self.push(Kind::Comment(comment.trim().to_string()), &at);
                continue;
            }
            let words = words(line, &at)?;
            if words.first() == Some(&Kind::Word("include".into())) {
                self.include(&words[1..], &at, depth)?;
                continue;
            }
            for kind in words {
                self.push(kind, &at);
            }
            self.push(Kind::Newline, &at);
        }
        Ok(())
    }

    fn push(&mut self, kind: Kind, at: &Position) {
        self.tokens.push(Token {
            kind,
            at: at.clone(),
        });
    }

    /// `include PATTERN`: every file the glob names, in name order, read in
    /// place of the line.
    fn include(&mut self, args: &[Kind], at: &Position, depth: usize) -> Result<(), ImportError> {
        let [Kind::Word(pattern)] = args else {
            return Err(ImportError::Syntax {
                at: at.clone(),
                message: "include takes one file name or glob".into(),
            });
        };
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(ImportError::Syntax {
                at: at.clone(),
                message: format!(
                    "includes nested over {MAX_INCLUDE_DEPTH} deep (does a file include itself?)"
                ),
            });
        }
        let base = at.file.parent().unwrap_or(Path::new(""));
        let full = base.join(pattern);
        let paths = if has_wildcard(pattern) {
            let found = expand(self.files, &full);
            if found.is_empty() {
                self.notes.push(Note {
                    at: at.clone(),
                    directive: format!("include {pattern}"),
                    note: format!("{} matches no file: nothing included", full.display()),
                });
            }
            found
        } else {
            vec![full]
        };
        for path in paths {
            self.read += 1;
            if self.read > MAX_FILES {
                return Err(ImportError::Syntax {
                    at: at.clone(),
                    message: format!(
                        "more than {MAX_FILES} files included (is a file included twice?)"
                    ),
                });
            }
            let text = self.files.read(&path).map_err(|source| ImportError::Read {
                path: path.clone(),
                from: Some(at.clone()),
                source,
            })?;
            self.lex(&Arc::from(path.as_path()), &text, depth + 1)?;
        }
        Ok(())
    }
}

/// One line's words and braces; a comment ends it.
fn words(line: &str, at: &Position) -> Result<Vec<Kind>, ImportError> {
    let mut out = Vec::new();
    let mut chars = line.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '#' | '!' => break,
            '{' => {
                chars.next();
                out.push(Kind::Open);
            }
            '}' => {
                chars.next();
                out.push(Kind::Close);
            }
            '"' => {
                chars.next();
                let rest = &line[start + 1..];
                let Some(end) = rest.find('"') else {
                    return Err(ImportError::Syntax {
                        at: at.clone(),
                        message: "a quoted word is not closed on its line".into(),
                    });
                };
                out.push(Kind::Word(rest[..end].to_string()));
                for _ in 0..=rest[..end].chars().count() {
                    chars.next();
                }
            }
            _ => {
                let mut end = line.len();
                while let Some(&(i, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '{' | '}' | '"') {
                        end = i;
                        break;
                    }
                    chars.next();
                }
                out.push(Kind::Word(line[start..end].to_string()));
            }
        }
    }
    Ok(out)
}

fn has_wildcard(pattern: &str) -> bool {
    pattern.contains(['*', '?', '['])
}

/// The files a glob names, sorted; components without a wildcard are
/// taken as written.
fn expand(files: &dyn Files, pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    let components: Vec<_> = pattern.components().collect();
    for (i, component) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let text = component.as_os_str().to_string_lossy();
        if !has_wildcard(&text) {
            for path in &mut found {
                path.push(component);
            }
            continue;
        }
        let mut next = Vec::new();
        for dir in &found {
            let listing = files
                .list(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                })
                .unwrap_or_default();
            let mut names: Vec<_> = listing
                .into_iter()
                .filter(|(name, is_dir)| {
                    (*is_dir != last) && !name.starts_with('.') && glob_match(&text, name)
                })
                .map(|(name, _)| dir.join(name))
                .collect();
            names.sort();
            next.extend(names);
        }
        found = next;
    }
    found
}

/// Shell-style matching of one path component: `*`, `?`, `[abc]`,
/// `[a-z]`, `[!a]`. Iterative, with one backtrack point (the last `*`), so
/// its time is at most the product of the lengths.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some('*') => {
                star = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some('?') => Some(p + 1),
            Some('[') => match class(&pattern, p, name[n]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                None => (name[n] == '[').then_some(p + 1),
            },
            Some(&c) => (c == name[n]).then_some(p + 1),
            None => None,
        };
        if let Some(next) = step {
            p = next;
            n += 1;
        } else if let Some((after, from)) = star {
            p = after;
            n = from + 1;
            star = Some((after, from + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// The class `[...]` at `pattern[at]`: whether `c` is in it, and the index
/// after it; `None` if it is not closed.
fn class(pattern: &[char], at: usize, c: char) -> Option<(bool, usize)> {
    let close = pattern.iter().skip(at + 2).position(|x| *x == ']')? + at + 2;
    let set = &pattern[at + 1..close];
    let (negated, set) = match set.first() {
        Some('!' | '^') => (true, &set[1..]),
        _ => (false, set),
    };
    let mut hit = false;
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == '-' {
            hit |= (set[i]..=set[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= set[i] == c;
            i += 1;
        }
    }
    Some((hit != negated, close + 1))
}

/// The statements up to the `}` that closes `opener`'s block (the end of
/// the text at the top level).
fn block(
    tokens: &[Token],
    at: &mut usize,
    opener: Option<&Statement>,
    depth: usize,
) -> Result<Vec<Statement>, ImportError> {
    let mut statements = Vec::new();
    let mut comments = Vec::new();
    loop {
        let Some(token) = tokens.get(*at) else {
            return match opener {
                None => Ok(statements),
                Some(opener) => Err(ImportError::Syntax {
                    at: opener.at.clone(),
                    message: format!(
                        "the block of `{}` opened here is never closed (a `}}` is missing)",
                        opener.words.join(" ")
                    ),
                }),
            };
        };
        *at += 1;
        match &token.kind {
            Kind::Close => {
                return if opener.is_some() {
                    Ok(statements)
                } else {
                    Err(ImportError::Syntax {
                        at: token.at.clone(),
                        message: "`}` closes no block (one `}` too many, or a `{` missing)".into(),
                    })
                };
            }
            Kind::Newline => {}
            Kind::Blank => comments.clear(),
            Kind::Comment(text) => comments.push(text.clone()),
            Kind::Open => {
                return Err(ImportError::Syntax {
                    at: token.at.clone(),
                    message: "`{` opens a block without a keyword before it".into(),
                });
            }
            Kind::Word(first) => {
                let mut statement = Statement {
                    words: vec![first.clone()],
                    at: token.at.clone(),
                    comments: std::mem::take(&mut comments),
                    block: None,
                };
                while let Some(Token {
                    kind: Kind::Word(word),
                    ..
                }) = tokens.get(*at)
                {
                    statement.words.push(word.clone());
                    *at += 1;
                }
                // The block's `{` on this line, or alone at the start of
                // the next.
                let mut next = *at;
                if matches!(
                    tokens.get(next),
                    Some(Token {
                        kind: Kind::Newline,
                        ..
                    })
                ) {
                    next += 1;
                }
                if matches!(
                    tokens.get(next),
                    Some(Token {
                        kind: Kind::Open,
                        ..
                    })
                ) {
                    if depth >= MAX_BLOCK_DEPTH {
                        return Err(ImportError::Syntax {
                            at: statement.at,
                            message: format!("blocks nested over {MAX_BLOCK_DEPTH} deep"),
                        });
                    }
                    *at = next + 1;
                    statement.block = Some(block(tokens, at, Some(&statement), depth + 1)?);
                }
                statements.push(statement);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::tests::memory;

    fn tree(files: &[(&str, &str)]) -> Result<Vec<Statement>, ImportError> {
        parse(
            Path::new("/k/keepalived.conf"),
            &memory(files),
            None,
            &mut Vec::new(),
        )
    }

    /// The tree as `keyword args {children}` lines, for comparison.
    fn show(statements: &[Statement]) -> Vec<String> {
        let mut out = Vec::new();
        for s in statements {
            out.push(format!("{}:{}", s.at.line, s.words.join("|")));
            for child in show(s.children()) {
                out.push(format!("  {child}"));
            }
        }
        out
    }

    #[test]
    fn comments_quotes_braces_and_odd_spacing() {
        let text = "! head\n\n# about web\n# second line\nvirtual_server   10.0.0.1\t80{\n\
                    \tlb_algo rr   # inline\n  real_server 10.0.0.2 80 { weight 2 }\n\
                    misc_path \"/bin/check arg # not a comment\"\n}\nvrrp_instance VI\n{\n\
                    virtual_ipaddress {\n 10.0.0.9/24 dev eth0\n }}\n";
        let statements = tree(&[("/k/keepalived.conf", text)]).unwrap();
        assert_eq!(
            show(&statements),
            [
                "5:virtual_server|10.0.0.1|80",
                "  6:lb_algo|rr",
                "  7:real_server|10.0.0.2|80",
                "    7:weight|2",
                "  8:misc_path|/bin/check arg # not a comment",
                "10:vrrp_instance|VI",
                "  12:virtual_ipaddress",
                "    13:10.0.0.9/24|dev|eth0",
            ]
        );
        assert_eq!(statements[0].comments, ["about web", "second line"]);
        assert!(statements[1].comments.is_empty());
    }

    #[test]
    fn includes_splice_files_in_name_order() {
        let files = [
            (
                "/k/keepalived.conf",
                "global_defs {\n include defs.conf\n}\ninclude conf.d/*.conf\n",
            ),
            ("/k/defs.conf", "router_id edge\n"),
            ("/k/conf.d/b.conf", "virtual_server 10.0.0.2 80 {\n}\n"),
            ("/k/conf.d/a.conf", "virtual_server 10.0.0.1 80 {\n}\n"),
            ("/k/conf.d/skip.txt", "junk {\n"),
        ];
        let statements = tree(&files).unwrap();
        assert_eq!(
            show(&statements),
            [
                "1:global_defs",
                "  1:router_id|edge",
                "1:virtual_server|10.0.0.1|80",
                "1:virtual_server|10.0.0.2|80",
            ]
        );
        assert_eq!(&*statements[1].at.file, Path::new("/k/conf.d/a.conf"));
        assert_eq!(
            &*statements[0].children()[0].at.file,
            Path::new("/k/defs.conf")
        );
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            (
                "virtual_server 10.0.0.1 80 {\n  real_server 10.0.0.2 80 {\n}\n",
                "/k/keepalived.conf:1: the block of `virtual_server 10.0.0.1 80` opened here is never closed",
            ),
            ("a {\n}\n}\n", "/k/keepalived.conf:3: `}` closes no block"),
            (
                "{\n}\n",
                "/k/keepalived.conf:1: `{` opens a block without a keyword",
            ),
            (
                "misc_path \"/bin/x\n",
                "/k/keepalived.conf:1: a quoted word is not closed",
            ),
            ("$X=1\n", "/k/keepalived.conf:1: keepalived parameters"),
            (
                "\ninclude missing.conf\n",
                "/k/keepalived.conf:2: include /k/missing.conf",
            ),
            ("include self.conf\n", "includes nested over 32 deep"),
        ];
        for (text, expected) in cases {
            let error = tree(&[
                ("/k/keepalived.conf", text),
                ("/k/self.conf", "include self.conf\n"),
            ])
            .unwrap_err()
            .to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn config_ids_select_lines() {
        let text = "@high priority 170\n@low priority 85\n@^low advert_int 2\n";
        let files = memory(&[("/k/keepalived.conf", text)]);
        for (id, expected, left_out) in [
            (None, vec!["3:advert_int|2"], 2),
            (Some("high"), vec!["1:priority|170", "3:advert_int|2"], 1),
            (Some("low"), vec!["2:priority|85"], 2),
        ] {
            let mut notes = Vec::new();
            let statements =
                parse(Path::new("/k/keepalived.conf"), &files, id, &mut notes).unwrap();
            assert_eq!(show(&statements), expected, "{id:?}");
            assert_eq!(notes.len(), left_out, "{notes:?}");
        }
    }

    #[test]
    fn globs_match_like_a_shell() {
        for (pattern, name, expected) in [
            ("*.conf", "a.conf", true),
            ("*.conf", "a.conf.bak", false),
            ("vs-?.conf", "vs-1.conf", true),
            ("vs-[0-9].conf", "vs-7.conf", true),
            ("vs-[!0-9].conf", "vs-7.conf", false),
            ("[ab]*", "b", true),
            ("exact", "exact", true),
            (
                "*a*a*a*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            ("a*", "a", true),
            ("[", "[", true),
            ("*.conf", ".conf", true),
        ] {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} {name}");
        }
    }
}
