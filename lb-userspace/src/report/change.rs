//! The operator's changes as the control socket carries them, and why one
//! is refused or half-done: the API answers with these, the controller
//! returns them.

use crate::{dataplane::DataplaneError, route::ReadError};

/// An operator's change to one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Override {
    /// Weight 0: no new flows; existing flows finish.
    Drain,
    /// Back to the weight it had.
    Undrain,
    /// A weight in place of the configured one.
    Weight(u32),
}

/// Why an override was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverrideError {
    /// No such service or backend; the message lists the valid ones.
    #[error("{0}")]
    Unknown(String),
    /// Applying it failed.
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// A change that failed half-way and whose undo failed too: the maps hold
/// part of it.
#[derive(Debug)]
pub struct UndoFailed {
    /// Why the change failed.
    pub write: DataplaneError,
    /// Why its undo failed.
    pub undo: DataplaneError,
}

impl std::fmt::Display for UndoFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Both causes in full: there is no one `source` to chain.
        let chain = |error: &DataplaneError| {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        };
        write!(
            f,
            "writing the new tables failed ({}), and undoing the writes already made \
             failed too ({}): the maps may hold entries of the new tables (deny-list \
             prefixes among them) that status and lb guard list do not show; restart \
             lb run to take the maps over and rewrite them",
            chain(&self.write),
            chain(&self.undo)
        )
    }
}

impl std::error::Error for UndoFailed {}

/// Whether a reload that failed with `error` left the maps half-changed.
pub fn half_done(error: &anyhow::Error) -> bool {
    error.downcast_ref::<UndoFailed>().is_some()
}

/// What the log and `lb reload` say of a reload that failed with `error`.
pub fn reload_failure(error: &anyhow::Error) -> &'static str {
    if half_done(error) {
        "reload failed half-way and its undo failed"
    } else {
        "reload refused; nothing changed"
    }
}

/// Why `lb route` has no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The request does not name a flow (the operator's to fix).
    #[error("{0}")]
    Request(String),
    /// A map the decision needs could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
}
