//! The lb controller as a library: configuration, the data-plane handle, and
//! the command line. The `lb` binary is a thin wrapper around [`cli::main`].

pub mod agent;
pub mod announce;
pub mod api;
pub mod attack;
pub mod bird;
pub mod cli;
pub mod config;
pub mod conns;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod dynamic;
pub mod guard;
pub mod ha;
pub mod health;
pub mod hops;
pub mod host;
pub mod http;
pub mod import;
pub mod lock;
pub mod maglev;
pub mod metrics;
pub mod netlink;
pub mod owner;
pub mod plan;
pub mod release;
pub mod report;
pub mod route;
pub mod sync;
pub mod sysctl;
pub mod trace;
pub mod vrrp;
pub mod watch;
pub mod web;
