//! The YAML layer: the text read into a [`Value`] by serde-saphyr (merge
//! keys applied, aliases replayed within a budget, one document only), and
//! [`Positions`], which finds where a field path is written by walking the
//! parser's own events (the parser serde-saphyr is built on), so that every
//! problem names its line and column whatever the style: comments, quoted
//! keys, anchors and aliases, merge keys, flow mappings.

use std::collections::HashMap;
use std::fmt;

use serde::de::{
    self, Deserialize, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
    value::{MapDeserializer, SeqDeserializer},
};

use super::ConfigProblem;

/// How many nodes YAML aliases (`*name`) and merge keys may add to the
/// configuration: sharing a health check or a backend list between a
/// thousand services stays far below it.
pub(super) const MAX_ALIAS_NODES: usize = 100_000;

/// A YAML node as the schema's types read it; mappings keep their order
/// (problems are listed in the order they are written).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    String(String),
    Seq(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    pub(super) fn as_sequence(&self) -> Option<&[Value]> {
        match self {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub(super) fn as_mapping(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value of the entry whose key is the string `key`.
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.as_mapping()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, value)| value)
    }

    pub(super) fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        match self {
            Value::Map(entries) => entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, value)| value),
            _ => None,
        }
    }

    pub(super) fn get_index_mut(&mut self, index: usize) -> Option<&mut Value> {
        match self {
            Value::Seq(items) => items.get_mut(index),
            _ => None,
        }
    }

    /// Removes the entry whose key is the string `key`, keeping the order
    /// of the others.
    pub(super) fn remove(&mut self, key: &str) -> Option<Value> {
        let Value::Map(entries) = self else {
            return None;
        };
        let at = entries.iter().position(|(k, _)| k.as_str() == Some(key))?;
        Some(entries.remove(at).1)
    }
}

impl fmt::Display for Value {
    /// As written in YAML's flow style, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::I64(n) => write!(f, "{n}"),
            Value::U64(n) => write!(f, "{n}"),
            Value::F64(n) => write!(f, "{n}"),
            Value::String(text) => write!(f, "{text:?}"),
            Value::Seq(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (key, value)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{key}: {value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> Visitor<'de> for Any {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
                Ok(Value::I64(n))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
                Ok(Value::U64(n))
            }
            fn visit_i128<E>(self, n: i128) -> Result<Value, E> {
                // Too big for any field; kept as written.
                Ok(i64::try_from(n).map_or(Value::String(n.to_string()), Value::I64))
            }
            fn visit_u128<E>(self, n: u128) -> Result<Value, E> {
                Ok(u64::try_from(n).map_or(Value::String(n.to_string()), Value::U64))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
                Ok(Value::F64(n))
            }
            fn visit_str<E>(self, text: &str) -> Result<Value, E> {
                Ok(Value::String(text.to_string()))
            }
            fn visit_string<E>(self, text: String) -> Result<Value, E> {
                Ok(Value::String(text))
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Value, E> {
                Ok(Value::String(String::from_utf8_lossy(bytes).into_owned()))
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(Any)
    }
}

/// Why a [`Value`] does not fit a type: serde's message.
#[derive(Debug)]
pub(crate) struct ValueError(String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        ValueError(message.to_string())
    }
}

impl IntoDeserializer<'_, ValueError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

impl<'de> Deserializer<'de> for Value {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::I64(n) => visitor.visit_i64(n),
            Value::U64(n) => visitor.visit_u64(n),
            Value::F64(n) => visitor.visit_f64(n),
            Value::String(text) => visitor.visit_string(text),
            Value::Seq(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Map(entries) => {
                let mut map = MapDeserializer::new(entries.into_iter());
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Null => visitor.visit_none(),
            value => visitor.visit_some(value),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self {
            // The schema's enums are unit variants written as their name.
            Value::String(text) => visitor.visit_enum(text.into_deserializer()),
            other => other.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

/// The text's one YAML document as a [`Value`], or the problem that stops
/// it being read: a syntax error (with its line and column), a second
/// document, or aliases that multiply.
pub(super) fn parse(text: &str) -> Result<Value, ConfigProblem> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        // No node is shorter than a byte: what aliases and merge keys add
        // is the rest ("billion laughs" stops here, within a second).
        budget: serde_saphyr::budget! {
            max_nodes: text.len().saturating_add(MAX_ALIAS_NODES),
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 2 * MAX_ALIAS_NODES,
        },
    };
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|error| {
        let (line, column) = error
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| {
                (
                    usize::try_from(l.line()).ok(),
                    usize::try_from(l.column()).ok(),
                )
            })
            .unwrap_or_default();
        let message = match error.without_snippet() {
            serde_saphyr::Error::MultipleDocuments { .. } => {
                "a second YAML document (after `---`): the configuration is one \
                 document; write each balancer's in its own file"
                    .to_string()
            }
            serde_saphyr::Error::AliasReplayLimitExceeded { .. }
            | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
            | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => alias_message(),
            other => {
                let mut message = strip_location(&other.to_string());
                // A hint for the programmer, not the operator.
                if let Some(at) = message.find(", set DuplicateKeyPolicy") {
                    message.truncate(at);
                }
                if message.contains("budget breached: Nodes") {
                    alias_message()
                } else {
                    message
                }
            }
        };
        ConfigProblem {
            path: String::new(),
            line,
            column,
            message,
        }
    })
}

fn alias_message() -> String {
    format!("aliases (`*name`) expand the configuration by more than {MAX_ALIAS_NODES} nodes")
}

/// serde-saphyr ends a message with " at line L, column C"; the position is
/// reported apart.
pub(super) fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// Where each node of the text's first document is written, to find the
/// line and column of a field path (`services[1].backends[0].port`).
pub(super) struct Positions {
    nodes: Vec<Node>,
    /// Anchor id → the node it names.
    anchors: HashMap<usize, usize>,
}

struct Node {
    /// 1-based line and column.
    at: (usize, usize),
    kind: Kind,
}

enum Kind {
    Scalar(String),
    Seq(Vec<usize>),
    /// Keys and values, alternating.
    Map(Vec<usize>),
    /// An alias (`*name`) of the anchor with this id.
    Alias(usize),
}

/// How many aliases and merge keys one lookup follows at most (an alias
/// inside its own anchor would otherwise loop).
const MAX_HOPS: usize = 64;

impl Positions {
    /// Reads the events of `text`'s first document; whatever comes after
    /// a syntax error is left out (the parse reports the error itself).
    pub(super) fn new(text: &str) -> Self {
        use granit_parser::{Event, Parser};
        let mut nodes: Vec<Node> = Vec::new();
        let mut anchors = HashMap::new();
        let mut open: Vec<usize> = Vec::new();
        let mut documents = 0;
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let at = (span.start.line(), span.start.col() + 1);
            let (kind, anchor, opens) = match event {
                Event::DocumentStart(..) => {
                    documents += 1;
                    if documents > 1 {
                        break;
                    }
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    open.pop();
                    continue;
                }
                Event::Scalar(value, _, anchor, _) => {
                    (Kind::Scalar(value.into_owned()), anchor, false)
                }
                Event::SequenceStart(_, anchor, _) => (Kind::Seq(Vec::new()), anchor, true),
                Event::MappingStart(_, anchor, _) => (Kind::Map(Vec::new()), anchor, true),
                Event::Alias(id) => (Kind::Alias(id), 0, false),
                _ => continue,
            };
            let index = nodes.len();
            nodes.push(Node { at, kind });
            if anchor != 0 {
                anchors.insert(anchor, index);
            }
            if let Some(&parent) = open.last() {
                match &mut nodes[parent].kind {
                    Kind::Seq(children) | Kind::Map(children) => children.push(index),
                    _ => {}
                }
            }
            if opens {
                open.push(index);
            }
        }
        Positions { nodes, anchors }
    }

    /// The 1-based line and column where the field at `path` is written:
    /// its key for a mapping entry, the item itself for a sequence index.
    /// Through an alias, where the anchored node writes it; through a merge
    /// key (`<<: *defaults`), the merged mapping's entry unless the mapping
    /// itself writes the key (which wins, as in the parse). A field left
    /// out (defaulted, or missing) is placed at the nearest enclosing entry
    /// that is written.
    pub(super) fn of(&self, path: &str) -> Option<(usize, usize)> {
        if path.is_empty() || self.nodes.is_empty() {
            return None;
        }
        let mut node = 0;
        let mut at = None;
        for segment in segments(path)? {
            let Some(found) = self.step(node, &segment) else {
                return at;
            };
            (node, at) = (found.0, Some(found.1));
        }
        at
    }

    /// The node `segment` leads to from `node`, and where it is written.
    fn step(&self, node: usize, segment: &Segment<'_>) -> Option<(usize, (usize, usize))> {
        let node = self.resolve(node)?;
        match *segment {
            Segment::Index(index) => {
                let Kind::Seq(items) = &self.nodes[node].kind else {
                    return None;
                };
                let item = *items.get(index)?;
                Some((item, self.nodes[item].at))
            }
            Segment::Key(key) => {
                let (key, value) = self.entry(node, key, 0)?;
                Some((value, self.nodes[key].at))
            }
        }
    }

    /// The node an alias stands for (or the node itself).
    fn resolve(&self, mut node: usize) -> Option<usize> {
        for _ in 0..MAX_HOPS {
            match self.nodes[node].kind {
                Kind::Alias(id) => node = *self.anchors.get(&id)?,
                _ => return Some(node),
            }
        }
        None
    }

    /// The key and value nodes of `map`'s entry `key`, its own entries
    /// first, then those of its merge keys in order.
    fn entry(&self, map: usize, key: &str, hops: usize) -> Option<(usize, usize)> {
        if hops > MAX_HOPS {
            return None;
        }
        let Kind::Map(children) = &self.nodes[map].kind else {
            return None;
        };
        let pairs = || children.chunks_exact(2).map(|pair| (pair[0], pair[1]));
        let text = |node: usize| match &self.nodes[node].kind {
            Kind::Scalar(text) => Some(text.as_str()),
            _ => None,
        };
        if let Some(found) = pairs().find(|&(k, _)| key != "<<" && text(k) == Some(key)) {
            return Some(found);
        }
        for (_, source) in pairs().filter(|&(k, _)| text(k) == Some("<<")) {
            let source = self.resolve(source)?;
            let found = match &self.nodes[source].kind {
                Kind::Map(_) => self.entry(source, key, hops + 1),
                Kind::Seq(items) => items
                    .iter()
                    .find_map(|&item| self.entry(self.resolve(item)?, key, hops + 1)),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `services[1].backends[0].port` as keys and indices.
fn segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut segments = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                segments.push(Segment::Key(&rest[..open]));
            }
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                segments.push(Segment::Index(rest.get(1..close)?.parse().ok()?));
                rest = &rest[close + 1..];
            }
        } else {
            segments.push(Segment::Key(rest));
        }
    }
    Some(segments)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError, ConfigProblem};

    fn problems(text: &str) -> Vec<ConfigProblem> {
        match Config::parse(text) {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    /// (path, line, column) of each problem.
    fn placed(text: &str) -> Vec<(String, usize, usize)> {
        problems(text)
            .into_iter()
            .map(|p| (p.path, p.line.unwrap_or(0), p.column.unwrap_or(0)))
            .collect()
    }

    const HEAD: &str = "instance: edge1\ninterfaces: [{ name: eth0 }]\n";

    #[test]
    fn comments_and_quoted_keys_do_not_move_a_problem() {
        // Comments that look like keys, and keys written in quotes: the
        // indentation guess placed these on the comment's line.
        let text = format!(
            "{HEAD}# services:\n#   - port: 1\nservices:\n  # port: 2\n  - \"name\": web\n    \
             'vip': 203.0.113.10 # port: 3\n    \"port\": eighty\n    protocol: tcp\n"
        );
        assert_eq!(placed(&text), [("services[0].port".into(), 9, 5)]);
    }

    #[test]
    fn flow_mappings_place_each_key_at_its_column() {
        let text = format!(
            "{HEAD}services:\n  - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp,\n      \
             backends: [{{ address: 192.0.2.11, weight: heavy }}, {{ address: x }}] }}\n"
        );
        assert_eq!(
            placed(&text),
            [
                ("services[0].backends[0].weight".into(), 5, 41),
                ("services[0].backends[1].address".into(), 5, 60),
            ]
        );
    }

    #[test]
    fn a_problem_reached_through_an_alias_is_placed_where_the_anchor_writes_it() {
        let text = format!(
            "{HEAD}services:\n  - name: a\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n    \
             backends: &pool\n      - {{ address: 192.0.2.11 }}\n      - {{ address: 192.0.2.12, tier: top }}\n  \
             - {{ name: b, vip: 203.0.113.11, port: 80, protocol: tcp, backends: *pool }}\n"
        );
        assert_eq!(
            placed(&text),
            [
                ("services[0].backends[1].tier".into(), 10, 32),
                ("services[1].backends[1].tier".into(), 10, 32),
            ]
        );
    }

    #[test]
    fn merge_keys_are_accepted_and_the_mapping_s_own_entries_win() {
        let text = format!(
            "{HEAD}x-defaults:\n  check: &check {{ kind: http, path: /health, interval: 5s, rise: 3 }}\n"
        );
        // `x-defaults` is not a section: templates sit in a service's own
        // keys' values instead, or the anchor is on the first user.
        assert_eq!(placed(&text)[0].0, "x-defaults");
        let text = format!(
            "{HEAD}services:\n  - name: a\n    vip: 203.0.113.10\n    port: 80\n    protocol: tcp\n    \
             health_check: &check {{ kind: http, path: /health, interval: 5s, rise: 3 }}\n  \
             - name: b\n    vip: 203.0.113.11\n    port: 80\n    protocol: tcp\n    \
             health_check: {{ <<: *check, interval: 2s }}\n  \
             - name: c\n    vip: 203.0.113.12\n    port: 80\n    protocol: tcp\n    \
             health_check:\n      <<: [*check]\n      path: /ready\n"
        );
        let config = Config::parse(&text).unwrap();
        let checks: Vec<_> = config
            .services
            .iter()
            .map(|s| s.health_check.clone().unwrap())
            .collect();
        assert_eq!(checks[0].interval, Duration::from_secs(5));
        // The override wins over the anchor's value; the rest is merged.
        assert_eq!(checks[1].interval, Duration::from_secs(2));
        assert_eq!(
            (checks[1].rise, checks[1].path.as_deref()),
            (3, Some("/health"))
        );
        assert_eq!(checks[2].path.as_deref(), Some("/ready"));
        assert_eq!(checks[2].interval, Duration::from_secs(5));
        // A bad value merged in is placed in the anchor; one overridden is
        // placed at the override.
        let bad = text.replace("rise: 3", "rise: many");
        let found = placed(&bad);
        assert!(
            found.contains(&("services[1].health_check.rise".into(), 8, 69)),
            "{found:?}"
        );
        let bad = text.replace("interval: 2s", "interval: soon");
        assert_eq!(
            placed(&bad),
            [("services[1].health_check.interval".into(), 13, 33)]
        );
    }

    #[test]
    fn a_second_document_is_refused_where_it_starts() {
        let text = format!("{HEAD}---\n{HEAD}");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        // Placed at the second document's first node.
        assert_eq!((found[0].line, found[0].column), (Some(4), Some(1)));
        assert!(
            found[0].message.contains("a second YAML document"),
            "{found:?}"
        );
        // One document, explicitly started and ended, is fine.
        Config::parse(&format!("---\n{HEAD}...\n")).unwrap();
    }

    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let found = problems(&format!("{HEAD}services:\n  - name: 'web\n"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "");
        assert!(
            found[0].line.is_some() && found[0].column.is_some(),
            "{found:?}"
        );
        let found = problems(&format!("{HEAD}services: [\n  {{ name: web }}\n"));
        assert!(found[0].line >= Some(3), "{found:?}");
        let found = problems("instance: a\n interfaces: []\n");
        assert_eq!(
            (found[0].line, found[0].column),
            (Some(2), Some(12)),
            "{found:?}"
        );
        assert!(!found[0].message.contains(" at line "), "{found:?}");
        // As `lb check` prints it.
        let shown = ConfigError::Invalid(found).to_string();
        assert!(
            shown.contains("  line 2, column 12: mapping values"),
            "{shown}"
        );
        let found = problems(&format!("{HEAD}instance: again\n"));
        assert_eq!(found[0].message, "duplicate mapping key: instance");
        assert_eq!((found[0].line, found[0].column), (Some(3), Some(1)));
    }
}
