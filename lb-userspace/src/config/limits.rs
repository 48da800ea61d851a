//! Bounds on hostile YAML, checked before the parser builds anything: flow
//! collections nested too deep, and aliases that multiply ("billion
//! laughs"). The fuzz tests found that either kept `serde_yaml` busy for
//! minutes.

use std::fmt;

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
        for c in line.chars() {
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
                    message: format!("`[` and `{{` nest more than {MAX_FLOW_NESTING} deep"),
                });
            }
            previous = c;
        }
    }
    None
}

/// How many nodes YAML aliases (`*name`) may add to the configuration:
/// sharing a health check or a backend list between a thousand services
/// stays far below it.
const MAX_ALIAS_NODES: u64 = 100_000;

/// Aliases that expand the configuration by more than about
/// [`MAX_ALIAS_NODES`] nodes ("billion laughs"), refused before anything is
/// built from them: `serde_yaml`'s own limit grows with the file, so a
/// 100 KB file could keep it busy for minutes (found by the fuzz tests).
/// The nodes are counted as `serde_yaml` replays them, and the count stops
/// at the budget: the text's length (no node is shorter than a byte) plus
/// the aliases' allowance. A syntax error ends the count; the parse proper
/// reports it.
pub(super) fn alias_problem(text: &str) -> Option<ConfigProblem> {
    use serde::de::{DeserializeSeed, Deserializer as _, Error, MapAccess, SeqAccess, Visitor};

    /// Counts nodes down from a budget, failing once it is spent.
    #[derive(Clone, Copy)]
    struct Nodes<'a>(&'a std::cell::Cell<u64>);

    impl Nodes<'_> {
        fn take<E: Error>(self) -> Result<(), E> {
            match self.0.get().checked_sub(1) {
                Some(left) => {
                    self.0.set(left);
                    Ok(())
                }
                None => Err(E::custom("alias budget spent")),
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Nodes<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Nodes<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any YAML node")
        }
        fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
            self.take()
        }
        fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
            self.take()
        }
        fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
            self.take()
        }
        fn visit_i128<E: Error>(self, _: i128) -> Result<(), E> {
            self.take()
        }
        fn visit_u128<E: Error>(self, _: u128) -> Result<(), E> {
            self.take()
        }
        fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
            self.take()
        }
        fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
            self.take()
        }
        fn visit_bytes<E: Error>(self, _: &[u8]) -> Result<(), E> {
            self.take()
        }
        fn visit_unit<E: Error>(self) -> Result<(), E> {
            self.take()
        }
        fn visit_none<E: Error>(self) -> Result<(), E> {
            self.take()
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
            // A tagged node (`!tag value`): the tag, then its value.
            use serde::de::VariantAccess as _;
            let ((), variant) = data.variant_seed(self)?;
            variant.newtype_variant_seed(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.take()?;
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.take()?;
            while map.next_entry_seed(self, self)?.is_some() {}
            Ok(())
        }
    }

    let budget = std::cell::Cell::new((text.len() as u64).saturating_add(MAX_ALIAS_NODES));
    // Only a spent budget matters here; any other error is the parse's
    // (which, like this, reads the first document only).
    let result = serde_yaml::Deserializer::from_str(text).deserialize_any(Nodes(&budget));
    // serde_yaml's own limit on alias jumps may strike first.
    let repetition = result.is_err_and(|e| e.to_string().contains("repetition limit"));
    (budget.get() == 0 || repetition).then(|| ConfigProblem {
        path: String::new(),
        line: None,
        message: format!(
            "aliases (`*name`) expand the configuration by more than {MAX_ALIAS_NODES} nodes"
        ),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn aliases_that_multiply_are_refused_before_expansion() {
        use std::fmt::Write as _;
        // Nine to the sixth power nodes; the fuzz tests' 100 KB variant kept
        // serde_yaml busy for minutes.
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
