//! Bounds on hostile YAML, checked before the parser builds anything: flow
//! collections nested too deep. (Aliases that multiply, "billion laughs",
//! are stopped by the parser's budget: see `yaml::parse`.) The fuzz tests
//! found that either kept the former parser, `serde_yaml`, busy for
//! minutes.

use super::ConfigProblem;

/// How deep `[` / `{` may nest; a configuration needs three.
const MAX_FLOW_NESTING: usize = 64;

/// Deeply nested flow collections (`[[[[...`), refused before the YAML
/// parser sees them: its scanner spends time proportional to the depth on
/// every token, so a few hundred kilobytes of brackets would take minutes
/// (found by the fuzz tests). Brackets are counted everywhere outside
/// comments, quoted ones too: a real configuration never gets near the
/// limit either way.
pub(super) fn nesting_problem(text: &str) -> Option<ConfigProblem> {
    let mut depth: usize = 0;
    for (number, line) in text.lines().enumerate() {
        let mut previous = ' ';
        for (column, c) in line.chars().enumerate() {
            match c {
                '#' if previous.is_whitespace() => break,
                '[' | '{' => depth += 1,
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth > MAX_FLOW_NESTING {
                return Some(ConfigProblem {
                    path: String::new(),
                    line: Some(number + 1),
                    column: Some(column + 1),
                    message: format!("`[` and `{{` nest more than {MAX_FLOW_NESTING} deep"),
                });
            }
            previous = c;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn aliases_that_multiply_are_refused_before_expansion() {
        use std::fmt::Write as _;
        // Nine to the sixth power nodes; the fuzz tests' 100 KB variant kept
        // serde_yaml, the former parser, busy for minutes.
        let mut text = String::from(
            "instance: a\ninterfaces: [{ name: lb0 }]\nx0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n",
        );
        for level in 1..7 {
            let previous = format!("*a{}", level - 1);
            let items = [previous.as_str(); 9].join(", ");
            writeln!(text, "x{level}: &a{level} [{items}]").unwrap();
        }
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("aliases (`*name`) expand"), "{error}");
        // Sharing a block is what aliases are for.
        let shared = "instance: a\ninterfaces: [{ name: lb0 }]\nservices:\n\
                      - name: a\n  vip: 203.0.113.1\n  port: 80\n  protocol: tcp\n  forwarding: dsr\n  \
                      backends: &b [{ address: 192.0.2.1 }]\n\
                      - name: b\n  vip: 203.0.113.2\n  port: 80\n  protocol: tcp\n  forwarding: dsr\n  \
                      backends: *b\n";
        Config::parse(shared).unwrap();
    }

    #[test]
    fn deep_flow_nesting_is_refused_at_once() {
        // 128 KiB of brackets kept the YAML scanner busy for minutes.
        let text = format!("instance: {}{}\n", "[".repeat(65_536), "]".repeat(65_536));
        let error = Config::parse(&text).unwrap_err().to_string();
        assert!(error.contains("nest more than 64 deep"), "{error}");
        assert!(error.contains("line 1"), "{error}");
        let fine = format!(
            "instance: a # {}\ninterfaces: [{{ name: lb0 }}]\n",
            "[".repeat(100)
        );
        Config::parse(&fine).unwrap();
    }
}
