//! Writes that apply whole or not at all, and say so when they cannot: a
//! plan's writes (undone from the planner's shadows when one fails) and the
//! operator's runtime deny list (a prefix taken back off when the settings
//! that go with it fail). When the undo fails too, the error carries both
//! causes: the maps then hold what neither status nor `lb guard list` shows,
//! and the operator must hear it rather than "nothing changed".

use std::collections::BTreeMap;

use anyhow::Context as _;
use lb_common::{Addr, Settings, maps::DENY_RUNTIME};

use crate::{
    config::Config,
    dataplane::{Dataplane, DataplaneError},
    guard::Guard,
    plan::{BackendKey, BackendState, Planner, Write},
    report::{OverrideError, UndoFailed},
};

/// The map writes these transactions make: [`Dataplane`]'s in `lb run`,
/// a fake that fails on demand in the tests.
pub(super) trait Maps {
    /// [`Dataplane::apply`].
    fn apply(&mut self, writes: &[Write]) -> Result<(), DataplaneError>;
    /// [`Dataplane::insert_deny`].
    fn insert_deny(&mut self, addr: &Addr, len: u32, origin: u8) -> Result<(), DataplaneError>;
    /// [`Dataplane::remove_deny`].
    fn remove_deny(&mut self, addr: &Addr, len: u32, origin: u8) -> Result<(), DataplaneError>;
    /// [`Dataplane::set_settings`].
    fn set_settings(&mut self, settings: &Settings) -> Result<(), DataplaneError>;
}

impl Maps for Dataplane {
    fn apply(&mut self, writes: &[Write]) -> Result<(), DataplaneError> {
        Dataplane::apply(self, writes)
    }
    fn insert_deny(&mut self, addr: &Addr, len: u32, origin: u8) -> Result<(), DataplaneError> {
        Dataplane::insert_deny(self, addr, len, origin)
    }
    fn remove_deny(&mut self, addr: &Addr, len: u32, origin: u8) -> Result<(), DataplaneError> {
        Dataplane::remove_deny(self, addr, len, origin)
    }
    fn set_settings(&mut self, settings: &Settings) -> Result<(), DataplaneError> {
        Dataplane::set_settings(self, settings)
    }
}

/// Plans `config` with `states` on a clone of `planner` and writes the
/// difference; the clone replaces `planner` only once every write is in.
/// A write that fails is undone — the writes made so far are reverted from
/// the two shadows (`Planner::undo`) — so maps and planner stay as they
/// were, and a later plan of the same states tries again. If the undo
/// fails too, the error says so with both causes (a configured deny-list
/// prefix, a VIP or a backend of the new configuration may be left in the
/// maps). Returns the number of writes.
pub(super) fn apply_whole(
    planner: &mut Planner,
    maps: &mut impl Maps,
    config: &Config,
    states: &BTreeMap<BackendKey, BackendState>,
) -> anyhow::Result<usize> {
    // Cheap: the tables are shared with the clone until it writes them.
    let mut next = planner.clone();
    let writes = next.plan(config, states)?;
    if let Err(error) = maps.apply(&writes) {
        let undo = planner.undo(&next);
        return match maps.apply(&undo) {
            Ok(()) => {
                tracing::warn!(writes = undo.len(), "a failed change was undone");
                Err(error).context("writing the new tables failed; the old ones are back")
            }
            Err(undo) => {
                let error = UndoFailed { write: error, undo };
                tracing::error!(%error, "undoing a failed change failed");
                Err(error.into())
            }
        };
    }
    *planner = next;
    Ok(writes.len())
}

/// `lb guard deny PREFIX`'s writes: the prefix into `DENY` as the
/// operator's, then `settings` (which turn the deny list on). If either
/// fails the prefix is taken back off and `guard` forgets it; if taking it
/// off fails too, `guard` keeps it — the kernel may still deny it, and
/// `lb guard list` must show it so that `lb guard allow` can retry — and
/// the error says so with both causes.
pub(super) fn deny_runtime(
    maps: &mut impl Maps,
    guard: &mut Guard,
    prefix: ipnet::IpNet,
    settings: &Settings,
) -> Result<(), OverrideError> {
    guard.deny(prefix);
    let (addr, len) = crate::plan::deny_key(&prefix);
    let Err(error) = maps
        .insert_deny(&addr, len, DENY_RUNTIME)
        .and_then(|()| maps.set_settings(settings))
    else {
        return Ok(());
    };
    let error = anyhow::Error::new(error);
    match maps.remove_deny(&addr, len, DENY_RUNTIME) {
        Ok(()) => {
            guard.allow(prefix);
            Err(OverrideError::Failed(error.context(format!(
                "denying {prefix} failed; nothing changed"
            ))))
        }
        Err(undo_error) => Err(OverrideError::Failed(error.context(format!(
            "denying {prefix} failed, and taking it back off the deny list failed too \
             ({:#}): the data path may still deny it; it stays on lb guard list, and \
             lb guard allow {prefix} retries",
            anyhow::Error::new(undo_error)
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{half_done, reload_failure};

    /// Maps that record the writes they are given and fail where told.
    #[derive(Default)]
    struct Fake {
        /// Per `apply` call, in order: fail it (missing: succeed).
        fail_apply: Vec<bool>,
        fail_settings: bool,
        fail_remove_deny: bool,
        applied: Vec<Vec<Write>>,
        deny: BTreeMap<(Addr, u32), u8>,
    }

    fn failure(map: &'static str) -> DataplaneError {
        DataplaneError::MissingMap(map)
    }

    impl Maps for Fake {
        fn apply(&mut self, writes: &[Write]) -> Result<(), DataplaneError> {
            let call = self.applied.len();
            self.applied.push(writes.to_vec());
            if self.fail_apply.get(call).copied().unwrap_or(false) {
                return Err(failure(if call == 0 { "NAT" } else { "DENY" }));
            }
            Ok(())
        }
        fn insert_deny(&mut self, addr: &Addr, len: u32, origin: u8) -> Result<(), DataplaneError> {
            *self.deny.entry((*addr, len)).or_default() |= origin;
            Ok(())
        }
        fn remove_deny(&mut self, addr: &Addr, len: u32, origin: u8) -> Result<(), DataplaneError> {
            if self.fail_remove_deny {
                return Err(failure("DENY"));
            }
            if let Some(origins) = self.deny.get_mut(&(*addr, len)) {
                *origins &= !origin;
            }
            self.deny.retain(|_, origins| *origins != 0);
            Ok(())
        }
        fn set_settings(&mut self, _: &Settings) -> Result<(), DataplaneError> {
            if self.fail_settings {
                return Err(failure("SETTINGS"));
            }
            Ok(())
        }
    }

    fn config(deny: &str) -> Config {
        Config::parse(&format!(
            "instance: t\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
             \x20 - {{ name: web, vip: 203.0.113.10, port: 80, protocol: tcp, \
             backends: [{{ address: 192.0.2.11 }}] }}\nguard: {{ deny: [{deny}] }}\n"
        ))
        .unwrap()
    }

    /// A planner that has applied `config("")`, and a reload's config that
    /// adds a deny-list prefix.
    fn planned() -> (Planner, Config) {
        let mut planner = Planner::new(13, 4, 8);
        let mut maps = Fake::default();
        apply_whole(&mut planner, &mut maps, &config(""), &BTreeMap::new()).unwrap();
        (planner, config("198.51.100.0/24"))
    }

    #[test]
    fn a_failed_change_whose_undo_works_says_the_old_tables_are_back() {
        let (mut planner, next) = planned();
        let before = planner.clone();
        let mut maps = Fake {
            fail_apply: vec![true],
            ..Fake::default()
        };
        let error = apply_whole(&mut planner, &mut maps, &next, &BTreeMap::new()).unwrap_err();
        let text = format!("{error:#}");
        assert!(text.contains("the old ones are back"), "{text}");
        assert!(text.contains("map NAT"), "{text}");
        assert_eq!(reload_failure(&error), "reload refused; nothing changed");
        assert!(!half_done(&error));
        // The undo took the new prefix back off, and the planner is as it was.
        assert!(
            maps.applied[0].iter().any(|w| matches!(w, Write::Deny(..))),
            "{:?}",
            maps.applied
        );
        assert!(
            maps.applied[1]
                .iter()
                .any(|w| matches!(w, Write::RemoveDeny(..))),
            "{:?}",
            maps.applied
        );
        assert!(planner.undo(&before).is_empty());
    }

    #[test]
    fn a_failed_undo_is_an_error_with_both_causes() {
        let (mut planner, next) = planned();
        let mut maps = Fake {
            fail_apply: vec![true, true],
            ..Fake::default()
        };
        let error = apply_whole(&mut planner, &mut maps, &next, &BTreeMap::new()).unwrap_err();
        let text = format!("{error:#}");
        assert!(!text.contains("the old ones are back"), "{text}");
        assert!(
            text.contains("undoing the writes already made failed too"),
            "{text}"
        );
        assert!(text.contains("map DENY"), "the undo's cause: {text}");
        assert!(text.contains("map NAT"), "the write's cause: {text}");
        assert!(text.contains("restart lb run"), "{text}");
        assert_eq!(
            reload_failure(&error),
            "reload failed half-way and its undo failed"
        );
        assert!(half_done(&error.context("reloading")));
    }

    #[test]
    fn a_runtime_deny_whose_settings_fail_is_taken_back_off() {
        let prefix: ipnet::IpNet = "198.51.100.0/24".parse().unwrap();
        let mut guard = Guard::default();
        let mut maps = Fake {
            fail_settings: true,
            ..Fake::default()
        };
        let error = deny_runtime(&mut maps, &mut guard, prefix, &Settings::default()).unwrap_err();
        let text = format!("{:#}", anyhow::Error::new(error));
        assert!(text.contains("nothing changed"), "{text}");
        assert!(text.contains("map SETTINGS"), "{text}");
        assert!(maps.deny.is_empty(), "{:?}", maps.deny);
        assert!(guard.runtime().is_empty());
    }

    #[test]
    fn a_runtime_deny_that_cannot_be_taken_back_off_stays_listed_and_says_so() {
        let prefix: ipnet::IpNet = "198.51.100.0/24".parse().unwrap();
        let mut guard = Guard::default();
        let mut maps = Fake {
            fail_settings: true,
            fail_remove_deny: true,
            ..Fake::default()
        };
        let error = deny_runtime(&mut maps, &mut guard, prefix, &Settings::default()).unwrap_err();
        let text = format!("{:#}", anyhow::Error::new(error));
        assert!(text.contains("failed too"), "{text}");
        assert!(text.contains("map DENY"), "the undo's cause: {text}");
        assert!(text.contains("map SETTINGS"), "the write's cause: {text}");
        // The kernel still denies it, and `lb guard list` shows it.
        assert_eq!(maps.deny.len(), 1, "{:?}", maps.deny);
        assert!(guard.runtime().contains(&prefix), "{:?}", guard.runtime());
    }
}
