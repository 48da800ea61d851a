//! The lb controller as a library: configuration, the data-plane handle, and
//! the command line. The `lb` binary is a thin wrapper around [`cli::main`].

pub mod cli;
pub mod config;
pub mod dataplane;
