//! Type errors, found section by section (and service by service) before
//! the whole file is deserialized, so that one run lists every one of them
//! with its field path rather than serde's first.

use serde::Deserialize as _;

use super::problems::{Problems, cap, locate};
use super::validate::check_ha;
use super::yaml::{Value, strip_location};
use super::{
    Announce, ConfigProblem, ConnSync, Control, DataplaneSettings, Guard, Ha, InstanceName,
    Interface, Service,
};

/// Type errors of each top-level section and each service of `value` (read
/// from `text`), separately. Empty when every part deserializes (the whole
/// is then deserialized as one).
pub(super) fn section_problems(text: &str, value: &Value) -> Vec<ConfigProblem> {
    let Some(map) = value.as_mapping() else {
        return vec![ConfigProblem {
            path: String::new(),
            line: Some(1),
            column: Some(1),
            message: "the configuration must be a mapping (instance: ..., services: ...)".into(),
        }];
    };
    let mut problems = Vec::new();
    for (key, section) in map {
        let name = key.as_str().unwrap_or("");
        match name {
            "instance" => check_part::<InstanceName>(section, name, &mut problems),
            "interfaces" => check_part::<Vec<Interface>>(section, name, &mut problems),
            "ha" => check_part::<Option<Ha>>(section, name, &mut problems),
            "control" => check_part::<Control>(section, name, &mut problems),
            "dataplane" => check_part::<DataplaneSettings>(section, name, &mut problems),
            "guard" => check_part::<Guard>(section, name, &mut problems),
            "announce" => check_part::<Option<Announce>>(section, name, &mut problems),
            "sync" => check_part::<Option<ConnSync>>(section, name, &mut problems),
            "services" => match section.as_sequence() {
                Some(services) => {
                    for (i, service) in services.iter().enumerate() {
                        check_part::<Service>(service, &format!("services[{i}]"), &mut problems);
                    }
                }
                None => check_part::<Vec<Service>>(section, name, &mut problems),
            },
            other => problems.push(ConfigProblem {
                path: other.to_string(),
                line: None,
                column: None,
                message: format!(
                    "unknown field `{other}`, expected one of `instance`, `interfaces`, \
                     `services`, `ha`, `control`, `dataplane`, `guard`, `announce`, `sync`"
                ),
            }),
        }
    }
    // The whole file is checked only once every part parses; a section
    // whose checks need nothing else is checked now, so its problems come
    // with the type errors rather than after they are fixed.
    if !problems.is_empty()
        && let Some(Ok(Some(ha))) = value
            .get("ha")
            .map(|section| Option::<Ha>::deserialize(section.clone()))
    {
        let mut more = Problems::default();
        check_ha(&ha, &mut more);
        problems.extend(more.0);
    }
    for required in ["instance", "interfaces"] {
        if value.get(required).is_none() {
            problems.push(ConfigProblem {
                path: String::new(),
                line: None,
                column: None,
                message: format!("missing field `{required}`"),
            });
        }
    }
    cap(&mut problems);
    locate(text, &mut problems);
    problems
}

/// Deserializes one part of the configuration as `T`, recording a problem
/// (with its full field path) for each part of it that does not fit. serde
/// stops at the first error, so each offending key is taken out and the
/// part tried again: entries are visited in order and missing fields are
/// noticed only at the end of their mapping, so this finds every bad entry
/// (a "missing field" for a key taken out here is not reported).
fn check_part<T: serde::de::DeserializeOwned>(
    value: &Value,
    prefix: &str,
    problems: &mut Vec<ConfigProblem>,
) {
    /// Passes per part at most: a bound on the work, not on what is useful.
    const PASSES: usize = 32;
    let mut value = value.clone();
    let mut taken_out: Vec<(String, String)> = Vec::new();
    for _ in 0..PASSES {
        let Err(error) = serde_path_to_error::deserialize::<_, T>(value.clone()) else {
            return;
        };
        let inner = error.path().to_string();
        let message = strip_location(&error.inner().to_string());
        if let Some(field) = missing_field(&message)
            && taken_out.contains(&(inner.clone(), field.to_string()))
        {
            return;
        }
        let path = match inner.as_str() {
            "." | "" => prefix.to_string(),
            rest if rest.starts_with('[') => format!("{prefix}{rest}"),
            rest => format!("{prefix}.{rest}"),
        };
        problems.push(ConfigProblem {
            path,
            line: None,
            column: None,
            message,
        });
        match take_out(&mut value, error.path()) {
            Some(key) => {
                let parent = match inner.rsplit_once('.') {
                    Some((parent, _)) => parent.to_string(),
                    None => ".".to_string(),
                };
                taken_out.push((parent, key));
            }
            None => return,
        }
    }
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Removes the mapping entry at `path` from `value`; returns its key, or
/// `None` if the path does not end in a mapping key that is there.
fn take_out(value: &mut Value, path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let (last, parents) = segments.split_last()?;
    let mut at = value;
    for segment in parents {
        at = match segment {
            Segment::Seq { index } => at.get_index_mut(*index)?,
            Segment::Map { key } => at.get_mut(key)?,
            _ => return None,
        };
    }
    let Segment::Map { key } = last else {
        return None;
    };
    // In place: the entries after it keep their order.
    at.remove(key)?;
    Some(key.clone())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::MINIMAL;
    use crate::config::{Config, ConfigError};

    #[test]
    fn unknown_key_names_path_and_line() {
        let text = MINIMAL.replace("    port: 80\n", "    port: 80\n    prot: 1\n");
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "services[0].prot");
        assert_eq!(problems[0].line, Some(8));
        assert!(
            problems[0].message.contains("unknown field `prot`"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn every_type_error_is_listed_with_its_line() {
        let text = MINIMAL.replace("protocol: tcp", "protocol: sctp").replace(
            "      - { address: 192.0.2.11, port: 8080 }\n",
            "      - { address: 192.0.2.11, port: 8080 }\n  - name: dns\n    vip: 203.0.113.10\n    port: fifty-three\n    protocol: udp\n",
        ) + "colour: blue\n";
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let found: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.path.clone(), p.line)).collect();
        assert!(
            found.contains(&("services[0].protocol".into(), Some(8))),
            "{found:?}"
        );
        assert!(
            found.contains(&("services[1].port".into(), Some(13))),
            "{found:?}"
        );
        assert!(found.contains(&("colour".into(), Some(15))), "{found:?}");
    }

    #[test]
    fn every_type_error_of_one_entry_is_listed() {
        let text = MINIMAL
            .replace("port: 80\n", "port: eighty\n")
            .replace("protocol: tcp", "protocol: sctp")
            .replace("port: 8080 }", "port: 8080, weight: heavy, colour: red }");
        let ConfigError::Invalid(problems) = Config::parse(&text).unwrap_err() else {
            panic!("expected Invalid");
        };
        let found: Vec<(String, Option<usize>)> =
            problems.iter().map(|p| (p.path.clone(), p.line)).collect();
        assert_eq!(
            found,
            [
                ("services[0].port".into(), Some(7)),
                ("services[0].protocol".into(), Some(8)),
                ("services[0].backends[0].weight".into(), Some(10)),
                ("services[0].backends[0].colour".into(), Some(10)),
            ],
            "{problems:?}"
        );
    }
}
