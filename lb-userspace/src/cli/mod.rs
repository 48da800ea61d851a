//! The `lb` command line. Exit codes: 0 ok, 1 user error (bad arguments, bad
//! config, unknown names), 2 runtime error (kernel refused, controller not
//! running, ...).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_common::Reason;

mod import;
mod show;

use show::{change_backend, guard, ha, route, stats, status, trace, watch_stats};

use crate::{
    api,
    config::{Config, ConfigError, Ha, default_socket},
    controller::{Controller, StatsReport, StatusReport},
    dataplane::{AttachMode, Dataplane, unpin_link},
    netlink::ifindex,
    owner::{ControllerHandle, OwnerError},
};

/// Layer-4 load balancer in the kernel's XDP layer, with health checks and
/// failover between two balancers.
///
/// lb spreads the TCP and UDP connections that clients open to a virtual IP
/// (VIP) over a pool of backend servers. Packets are forwarded in the network
/// driver (XDP), by NAT, direct server return or an IPIP tunnel. lb takes a
/// failed backend out of rotation within its health-check interval, sends
/// traffic to a standby tier when the primary one is down, sheds junk
/// traffic, and with a second balancer moves the floating IPs over when this
/// one fails (VRRP version 3, compatible with keepalived).
///
/// Validate with `lb check -c /etc/lb/lb.yaml`, then start `lb run -c
/// /etc/lb/lb.yaml` (the systemd unit lb.service does). The other commands
/// ask the running `lb run` over its control socket.
#[derive(Debug, Parser)]
#[command(
    name = "lb",
    version,
    propagate_version = true,
    after_long_help = "Exit status: 0 ok, 1 a mistake to fix (arguments, configuration, unknown \
                       name), 2 a runtime failure (kernel refused, lb run not running).\n\
                       Files: /etc/lb/lb.yaml (configuration), /run/lb/lb.sock (control socket), \
                       /sys/fs/bpf/lb/INSTANCE (pinned data plane).\n\
                       Documentation: /usr/share/doc/lb (README, deploy guide, TROUBLESHOOTING)."
)]
pub struct Cli {
    /// Output format: `human`, or `json` for scripts (every command).
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Log format of `lb run`: `human`, or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Control socket of the running `lb run` (default /run/lb/lb.sock;
    /// `-c FILE` takes it from that configuration instead).
    #[arg(long, global = true, env = "LB_SOCKET")]
    pub socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Human,
    /// For scripts.
    Json,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the balancer (what the systemd unit starts).
    ///
    /// Validates the configuration, attaches the XDP program to the
    /// configured interfaces, fills its tables, starts the health checks, VRRP
    /// (with an `ha:` section) and the control socket, then forwards until
    /// stopped. SIGTERM or SIGINT: hand the floating IPs to the peer, detach,
    /// remove the pinned state. SIGQUIT: exit but leave the data plane
    /// forwarding with its last tables (for an upgrade: the next `lb run`
    /// adopts it). SIGHUP: re-read the configuration, like `lb reload`.
    #[command(after_help = "Example:\n  lb run -c /etc/lb/lb.yaml")]
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file, changing nothing on the host.
    ///
    /// Lists every problem with its field path and line, and exits 1. What
    /// is valid but probably not meant (a service without backends), or what
    /// this host lacks for the file (an interface, a sysctl), is printed as a
    /// warning with exit 0: the file may be meant for another machine.
    #[command(after_help = "Example:\n  lb check -c /etc/lb/lb.yaml")]
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show services, backends and the HA state of the running balancer.
    ///
    /// Per backend: health (`up`, `down`, or `unknown` before its first
    /// check), configured and effective weight, tier, whether drained, and
    /// active flows (an estimate in dsr and tunnel modes, where lb sees only
    /// the client's half of a connection). Traffic goes to the lowest tier
    /// with enough healthy backends. The HA part says whether this balancer
    /// is master or backup, since when and why.
    #[command(after_help = "Example:\n  lb status\n  lb status web dns\n  lb status --output json")]
    Status {
        /// Show only these services (each must exist); none: every one.
        #[arg(value_name = "SERVICE")]
        services: Vec<String>,
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show the HA pair: each VRRP instance's state (master, backup, fault),
    /// the priority in effect and why, the master, the peer and the time of
    /// the last change.
    #[command(after_help = "Example:\n  lb ha\n  lb ha --output json")]
    Ha {
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show traffic counters: per service, per backend, and drops by reason.
    ///
    /// Packets, bytes and new flows per service and backend, and the packets
    /// the data plane did not forward, by reason (deploy/TROUBLESHOOTING.md
    /// explains each one). `--watch` refreshes every second with rates.
    #[command(
        after_help = "Example:\n  lb stats\n  lb stats web --watch\n  lb stats --output json"
    )]
    Stats {
        /// Show only these services (each must exist); none: every one.
        #[arg(value_name = "SERVICE")]
        services: Vec<String>,
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Per-second rates every second: redrawn in place on a terminal
        /// (like `top`), one block after another otherwise; with `--output
        /// json`, one JSON object per second.
        #[arg(long)]
        watch: bool,
        /// With `--watch`: stop after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Where a flow goes, and why: service, guard, connection table,
    /// scheduler, backend and next hop, read from the maps the kernel reads.
    #[command(
        after_help = "Example:\n  lb route 198.51.100.7:40000 203.0.113.10:80\n  \
                      lb route 198.51.100.7 203.0.113.10:53 udp\n  \
                      lb route '[2001:db8:1::7]:40000' '[2001:db8:f::10]:80' --output json"
    )]
    Route {
        /// The client: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6).
        #[arg(value_parser = parse_client)]
        client: (std::net::IpAddr, Option<u16>),
        /// The service: VIP:PORT ([VIP]:PORT for IPv6).
        #[arg(value_parser = parse_vip)]
        vip: std::net::SocketAddr,
        /// The protocol.
        #[arg(value_enum, default_value_t = RouteProtocol::Tcp)]
        protocol: RouteProtocol,
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Live decisions of the data path (drops with `--drops`): time,
    /// interface, 5-tuple, verdict reason, backend. The kernel emits them
    /// only while a trace runs, rate-limited; lost events are shown.
    #[command(
        after_help = "Example:\n  lb trace --drops\n  lb trace --vip 203.0.113.10 --limit 20\n  \
                      lb trace --source 198.51.100.0/24 --output json"
    )]
    Trace {
        /// Only drops.
        #[arg(long)]
        drops: bool,
        /// Only packets to this VIP (NAT replies, from a backend, are not).
        #[arg(long, value_name = "ADDR")]
        vip: Option<std::net::IpAddr>,
        /// Only packets from this prefix or address.
        #[arg(long, value_name = "PREFIX", value_parser = parse_prefix_arg)]
        source: Option<ipnet::IpNet>,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Drain a backend: no new connections go to it, established ones finish.
    ///
    /// For maintenance: drain, wait until `lb status` shows its active flows
    /// at 0, then stop the server. `lb undrain` returns it to service.
    #[command(after_help = "Example:\n  lb drain web 192.0.2.11\n  lb drain web 192.0.2.11:8080")]
    Drain {
        /// Service name.
        service: String,
        /// Backend: ADDR or ADDR:PORT.
        backend: String,
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Return a drained backend to service (undo `lb drain`).
    #[command(after_help = "Example:\n  lb undrain web 192.0.2.11")]
    Undrain {
        /// Service name.
        service: String,
        /// Backend: ADDR or ADDR:PORT.
        backend: String,
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Change a backend's share of new connections, at run time.
    ///
    /// Weights are relative within a service: a backend at 200 gets twice the
    /// new flows of one at 100. Holds until a reload changes that backend in
    /// the file; 0 drains it.
    #[command(after_help = "Example:\n  lb weight web 192.0.2.11 50")]
    Weight {
        /// Service name.
        service: String,
        /// Backend: ADDR or ADDR:PORT.
        backend: String,
        /// New weight; 0 drains.
        weight: u32,
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show or change which client sources the junk-traffic guard drops.
    ///
    /// `list` shows the denied prefixes (from the file and from this command)
    /// and the sources the automatic guard denied for a flood. `deny` drops
    /// every packet from a prefix to every VIP; `allow` undoes that and lets
    /// in automatically denied sources. Denials made here last until `lb
    /// run` restarts.
    #[command(
        after_help = "Example:\n  lb guard list\n  lb guard deny 198.51.100.0/24\n  \
                      lb guard allow 198.51.100.0/24"
    )]
    Guard {
        /// What to do.
        #[command(subcommand)]
        action: GuardAction,
        /// Take the control socket from this configuration.
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
    },
    /// Re-read the configuration file without interrupting traffic.
    ///
    /// As SIGHUP does. Services and backends change with the least
    /// disruption (established flows keep their backend while it is usable).
    /// A file with errors is refused and changes nothing; the errors are
    /// printed.
    #[command(after_help = "Example:\n  lb reload")]
    Reload {
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// On a backend: serve this host's load to the balancers.
    ///
    /// For the `resource` scheduler, which weights backends by the load they
    /// report (load average per CPU, or a number the application writes to
    /// `--load-file`).
    #[command(
        after_help = "Example:\n  lb agent --listen 0.0.0.0:9478 --allow 192.0.2.1 --allow 192.0.2.2\n  \
                            lb agent --listen [::]:9478 --secret-file /etc/lb/agent.secret \\\n    \
                            --load-file /run/myapp/load"
    )]
    Agent {
        /// Address to serve `GET /load` on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Report the number in this file instead of load average / CPUs.
        #[arg(long)]
        load_file: Option<PathBuf>,
        /// Answer only this balancer (an address or a prefix); repeatable.
        /// Default: any peer.
        #[arg(long, value_name = "ADDR", value_parser = parse_allow)]
        allow: Vec<ipnet::IpNet>,
        /// Require this file's secret (`Authorization: Bearer SECRET`); the
        /// balancer sends it from the service's `agent_secret_file`.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<PathBuf>,
    },
    /// Write an lb configuration from another balancer's configuration.
    #[command(
        after_help = "Example:\n  lb import keepalived /etc/keepalived/keepalived.conf > /etc/lb/lb.yaml"
    )]
    Import {
        /// What to import from.
        #[command(subcommand)]
        source: import::Source,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "Example:\n  lb completions bash > /etc/bash_completion.d/lb")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) of lb, or of one of its commands; the
    /// Debian package ships these (`cargo xtask package`).
    #[command(
        hide = true,
        after_help = "Example:\n  lb manpage | man -l -\n  lb manpage run"
    )]
    Manpage {
        /// A command (`run`, `status`, ...); none: the page of lb itself.
        command: Option<String>,
    },
    /// Remove lb's XDP program and pinned state from this host.
    ///
    /// Also what a SIGQUIT exit or a crash left forwarding. Traffic to the
    /// instance's VIPs stops being balanced at once.
    #[command(
        after_help = "Example:\n  lb detach -c /etc/lb/lb.yaml\n  lb detach --instance edge1"
    )]
    Detach {
        /// Take the instance name from this configuration.
        #[arg(short, long, conflicts_with = "instance")]
        config: Option<PathBuf>,
        /// The instance name.
        #[arg(long)]
        instance: Option<String>,
    },
    /// Remove floating IPs that a killed `lb run` left on this host.
    ///
    /// The systemd unit runs it after every stop (`ExecStopPost=`), so a
    /// crashed master never keeps answering for addresses its peer now
    /// holds. Refused while the instance runs.
    #[command(after_help = "Example:\n  lb release -c /etc/lb/lb.yaml")]
    Release {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// On a backend: unwrap the balancer's tunnel (tunnel forwarding).
    ///
    /// Attaches a small XDP program that strips the IPIP / IP6IP6 header the
    /// balancer adds, where the kernel's ipip module is not available; it
    /// passes every other packet untouched.
    #[command(after_help = "Example:\n  lb decap attach eth0\n  lb decap detach eth0")]
    Decap {
        /// attach or detach.
        #[arg(value_enum)]
        action: DecapAction,
        /// The backend's interface.
        interface: String,
    },
}

/// `lb guard list|deny|allow`.
#[derive(Debug, Subcommand)]
pub enum GuardAction {
    /// Denied prefixes (file and runtime) and automatically denied sources.
    List,
    /// Drop packets from PREFIX to every VIP (`drop_denied`).
    Deny {
        /// A prefix or an address.
        #[arg(value_parser = parse_prefix_arg)]
        prefix: ipnet::IpNet,
    },
    /// Undo `lb guard deny`, and let in sources in PREFIX that the
    /// automatic guard denied.
    Allow {
        /// A prefix or an address.
        #[arg(value_parser = parse_prefix_arg)]
        prefix: ipnet::IpNet,
    },
}

/// `lb route`'s protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RouteProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// `lb route`'s CLIENT: an address, with or without a port.
fn parse_client(text: &str) -> Result<(std::net::IpAddr, Option<u16>), String> {
    if let Ok(addr) = text.parse::<std::net::SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .map(|addr| (addr, None))
        .map_err(|_| format!("{text:?} is not ADDR or ADDR:PORT ([ADDR]:PORT for IPv6)"))
}

/// `lb route`'s VIP:PORT.
fn parse_vip(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not VIP:PORT ([VIP]:PORT for IPv6)"))
}

fn parse_prefix_arg(text: &str) -> Result<ipnet::IpNet, String> {
    api::parse_prefix(text).ok_or_else(|| format!("{text:?} is not an address or a prefix"))
}

/// `lb decap attach|detach`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DecapAction {
    /// Load `lb_decap`, attach it and pin it; exits at once.
    Attach,
    /// Remove it.
    Detach,
}

/// A failure, classified for the exit code.
#[derive(Debug)]
enum Failure {
    User(anyhow::Error),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    /// An unreadable or invalid configuration is the user's to fix.
    fn from(error: ConfigError) -> Self {
        Failure::User(error.into())
    }
}

impl From<api::ClientError> for Failure {
    /// The controller refusing a request (unknown name, bad file) is the
    /// user's to fix; anything else (not running, I/O) is a runtime error.
    fn from(error: api::ClientError) -> Self {
        match error {
            api::ClientError::Api { status, .. } if (400..500).contains(&status) => {
                Failure::User(error.into())
            }
            _ => Failure::Runtime(error.into()),
        }
    }
}

/// Entry point of the `lb` binary.
#[allow(clippy::too_many_lines, reason = "one short arm per subcommand")]
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout with exit 0; a command line that
            // does not parse is a user error: exit 1, as every other one.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.log_format);
    let output = cli.output;
    let result = match &cli.command {
        Command::Run { config } => run(config, output),
        Command::Check { config } => check(config, output),
        Command::Status { services, config } => socket(cli.socket.as_deref(), config.as_deref())
            .and_then(|s| status(&s, services, output)),
        Command::Ha { config } => {
            socket(cli.socket.as_deref(), config.as_deref()).and_then(|s| ha(&s, output))
        }
        Command::Stats {
            services,
            config,
            watch,
            count,
        } => socket(cli.socket.as_deref(), config.as_deref()).and_then(|s| {
            if *watch {
                watch_stats(&s, services, output, *count)
            } else {
                stats(&s, services, output)
            }
        }),
        Command::Route {
            client,
            vip,
            protocol,
            config,
        } => socket(cli.socket.as_deref(), config.as_deref())
            .and_then(|s| route(&s, *client, *vip, *protocol, output)),
        Command::Trace {
            drops,
            vip,
            source,
            limit,
            config,
        } => {
            let filter = crate::trace::Filter {
                drops: *drops,
                vip: *vip,
                source: *source,
            };
            socket(cli.socket.as_deref(), config.as_deref())
                .and_then(|s| trace(&s, &filter, *limit, output))
        }
        Command::Decap { action, interface } => decap(*action, interface, output),
        Command::Drain {
            service,
            backend,
            config,
        } => socket(cli.socket.as_deref(), config.as_deref())
            .and_then(|s| change_backend(&s, "/v1/drain", service, backend, None, output)),
        Command::Undrain {
            service,
            backend,
            config,
        } => socket(cli.socket.as_deref(), config.as_deref())
            .and_then(|s| change_backend(&s, "/v1/undrain", service, backend, None, output)),
        Command::Weight {
            service,
            backend,
            weight,
            config,
        } => socket(cli.socket.as_deref(), config.as_deref()).and_then(|s| {
            change_backend(&s, "/v1/weight", service, backend, Some(*weight), output)
        }),
        Command::Guard { action, config } => {
            socket(cli.socket.as_deref(), config.as_deref()).and_then(|s| guard(&s, action, output))
        }
        Command::Reload { config } => {
            socket(cli.socket.as_deref(), config.as_deref()).and_then(|s| reload(&s, output))
        }
        Command::Agent {
            listen,
            load_file,
            allow,
            secret_file,
        } => agent(
            *listen,
            load_file.clone(),
            allow.clone(),
            secret_file.as_deref(),
        ),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "lb", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage { command } => manpage(command.as_deref()),
        Command::Detach { config, instance } => {
            detach(config.as_deref(), instance.as_deref(), output)
        }
        Command::Release { config } => release(config, output),
        Command::Import { source } => return import::run(source, output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::User(error)) => {
            report_error(&error, output);
            ExitCode::from(1)
        }
        Err(Failure::Runtime(error)) => {
            report_error(&error, output);
            ExitCode::from(2)
        }
    }
}

/// `lb manpage [COMMAND]`: the page of `lb` (section 8: commands for the
/// administrator), or of `lb COMMAND` as `lb-COMMAND(8)`. Hidden commands
/// (this one) are left out of the pages.
fn manpage(command: Option<&str>) -> Result<(), Failure> {
    let lb = <Cli as clap::CommandFactory>::command();
    let page = match command {
        None => lb,
        Some(name) => {
            let Some(sub) = lb
                .get_subcommands()
                .find(|sub| sub.get_name() == name && !sub.is_hide_set())
            else {
                return Err(Failure::User(anyhow::anyhow!(
                    "no command `{name}`: see `lb --help`"
                )));
            };
            // clap names are `&'static str` without its `string` feature;
            // this process prints one page and exits.
            let page_name: &'static str = String::leak(format!("lb-{name}"));
            sub.clone().name(page_name).bin_name(format!("lb {name}"))
        }
    };
    clap_mangen::Man::new(page)
        .section("8")
        .manual("lb manual")
        .render(&mut std::io::stdout())
        .context("writing the manual page")
        .map_err(Failure::Runtime)
}

/// `--allow`: an address (a one-address prefix) or a prefix.
fn parse_allow(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a prefix"))
}

/// `lb agent`: an unreadable secret is the operator's to fix (exit 1); an
/// address that cannot be bound is a runtime error (exit 2), as before.
fn agent(
    listen: std::net::SocketAddr,
    load_file: Option<PathBuf>,
    allow: Vec<ipnet::IpNet>,
    secret_file: Option<&Path>,
) -> Result<(), Failure> {
    let secret = secret_file
        .map(crate::agent::read_secret)
        .transpose()
        .map_err(Failure::User)?;
    let listener = crate::agent::bind(listen).map_err(Failure::Runtime)?;
    let access = crate::agent::Access { allow, secret };
    crate::agent::serve(listener, load_file, access).map_err(Failure::Runtime)
}

fn report_error(error: &anyhow::Error, output: Output) {
    match output {
        Output::Human => eprintln!("error: {error:#}"),
        Output::Json => {
            let mut value = serde_json::json!({ "error": format!("{error:#}") });
            if let Some(ConfigError::Invalid(problems)) = error.downcast_ref::<ConfigError>() {
                value["problems"] = problems_json(problems);
            }
            println!("{value}");
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The control socket: `--socket` / `LB_SOCKET`, else the configuration's,
/// else the default.
fn socket(flag: Option<&Path>, config: Option<&Path>) -> Result<PathBuf, Failure> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    match config {
        Some(path) => Ok(Config::load(path)?.control.socket),
        None => Ok(default_socket()),
    }
}

/// `lb check`: every problem of the file (exit 1), as `lb run` would find
/// them; then, as warnings (exit 0), what is valid but probably not meant
/// ([`Config::warnings`]: a service with no backends) and what this host
/// lacks for it (the file may be meant for another machine).
fn check(path: &Path, output: Output) -> Result<(), Failure> {
    let text = crate::config::read(path)?;
    let config = Config::parse(&text)?;
    let mut warnings = config.warnings();
    let mut host = crate::host::problems(&config);
    crate::config::locate(&text, &mut warnings);
    crate::config::locate(&text, &mut host);
    let memory = crate::host::table_memory(&config);
    let available = crate::host::available_memory();
    match output {
        Output::Human => {
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            for warning in &host {
                eprintln!("warning: {warning} (lb run would refuse to start on this host)");
            }
            println!(
                "{}: ok ({} service(s), {} interface(s){})",
                path.display(),
                config.services.len(),
                config.interfaces.len(),
                match warnings.len() + host.len() {
                    0 => String::new(),
                    n => format!(", {n} warning(s)"),
                }
            );
            println!(
                "tables: about {} of kernel memory (Maglev {}, connection tables {}, the rest {}){}",
                crate::dataplane::memory::human(memory.total()),
                crate::dataplane::memory::human(memory.maglev),
                crate::dataplane::memory::human(memory.connections),
                crate::dataplane::memory::human(memory.other),
                available.map_or_else(String::new, |bytes| format!(
                    "; this host has {} available",
                    crate::dataplane::memory::human(bytes)
                ))
            );
        }
        Output::Json => {
            warnings.extend(host);
            println!(
                "{}",
                serde_json::json!({"ok": true, "services": config.services.len(),
                "interfaces": config.interfaces.len(),
                "warnings": problems_json(&warnings),
                "table_memory": {
                    "total_bytes": memory.total(),
                    "maglev_bytes": memory.maglev,
                    "connections_bytes": memory.connections,
                    "other_bytes": memory.other,
                    "available_bytes": available,
                }})
            );
        }
    }
    Ok(())
}

/// Problems as JSON: `[{"path", "line", "column", "message"}]`.
fn problems_json(problems: &[crate::config::ConfigProblem]) -> serde_json::Value {
    problems
        .iter()
        .map(|p| {
            serde_json::json!({"path": p.path, "line": p.line, "column": p.column,
                               "message": p.message})
        })
        .collect()
}

/// What `lb run` does before it changes anything, in order: the
/// configuration (a bad file: exit 1; its warnings are logged); the
/// instance lock, held from here until the process ends (a running
/// instance: exit 1); what the host must provide (exit 2).
fn prepare_run(path: &Path) -> Result<(Config, crate::lock::InstanceLock), Failure> {
    let text = crate::config::read(path)?;
    let config = Config::parse(&text)?;
    let lock = crate::lock::InstanceLock::acquire(
        Path::new(crate::lock::LOCK_ROOT),
        config.instance.as_str(),
        &config.control.socket,
    )
    .map_err(|error| match error {
        crate::lock::LockError::Held { .. } => Failure::User(error.into()),
        _ => Failure::Runtime(error.into()),
    })?;
    let mut warnings = config.warnings();
    crate::config::locate(&text, &mut warnings);
    for warning in &warnings {
        tracing::warn!(
            path = %warning.path,
            line = ?warning.line,
            column = ?warning.column,
            "{}",
            warning.message
        );
    }
    let mut missing = crate::host::problems(&config);
    if !missing.is_empty() {
        crate::config::locate(&text, &mut missing);
        let list: Vec<String> = missing.iter().map(|p| format!("  {p}")).collect();
        return Err(Failure::Runtime(anyhow::anyhow!(
            "this host lacks what {} names; nothing was changed:\n{}",
            path.display(),
            list.join("\n")
        )));
    }
    Ok((config, lock))
}

/// SIGQUIT's stop, on the owner thread: hand HA over, withdraw the
/// announced VIPs (no controller follows health from here on: the upstream
/// sends them to the other balancers) and turn tracing off (the data plane
/// stays; it must not go on emitting events nobody reads), but leave the
/// data plane attached and pinned.
fn leave_attached(mut c: Controller) {
    c.stop_ha();
    c.stop_sync();
    c.withdraw_all();
    if let Err(error) = c.set_trace(None) {
        tracing::warn!(error = %format!("{error:#}"), "turning the trace off");
    }
    // Kept to the end: the process exits next, and dropping would wait
    // for the health probes in flight.
    std::mem::forget(c);
}

/// The metrics endpoint and the status page (if configured; one listener
/// when both have the same address), then the control socket: once it
/// answers, the data plane is ready.
fn listen(
    control: &crate::config::Control,
    controller: &crate::owner::ControllerHandle,
) -> anyhow::Result<api::Server> {
    let shared = control.web.is_some() && control.web == control.metrics;
    if let Some(address) = control.metrics
        && !shared
    {
        crate::metrics::serve(address, controller.clone())?;
        tracing::info!(%address, "metrics at /metrics");
    }
    if let Some(address) = control.web {
        crate::web::serve(address, controller.clone(), shared)?;
        if shared {
            tracing::info!(%address, "metrics at /metrics");
        }
        tracing::info!(%address, "status page at http://{address}/");
    }
    api::Server::bind(&control.socket)
}

/// `lb run`: [`prepare_run`], then the data plane, VRRP, the metrics
/// listener and last the control socket — a failure there is undone before
/// exit 2 (see [`Controller::start`]).
/// SIGHUP: a reload, queued as an event like any other: applied in its
/// turn, its outcome logged by the owner.
fn reload_on_signal(controller: &ControllerHandle) -> Result<(), Failure> {
    tracing::info!("SIGHUP: reloading");
    controller
        .send(|c| {
            if let Err(error) = c.reload() {
                let what = crate::controller::reload_failure(&error);
                tracing::error!(error = %format!("{error:#}"), "{what}");
            }
        })
        .map_err(gone)
}

fn run(path: &Path, output: Output) -> Result<(), Failure> {
    let (config, _lock) = prepare_run(path)?;
    release_stale(&config)?;
    let socket = config.control.socket.clone();
    let signals = block_signals();
    let control = config.control.clone();
    let mut controller = Controller::start(config, path).map_err(Failure::Runtime)?;
    let (alarm, ha_stopped) = ha_alarm();
    // Sync before VRRP: a backup hears the master's flows from the start.
    if let Err(error) = controller.start_sync() {
        let outcome = controller.abandon();
        return Err(Failure::Runtime(error.context(outcome)));
    }
    // A restarted balancer catches up with a peer's table before it can
    // become master or announce (a bounded wait; see `sync::bulk`).
    controller.await_bulk(crate::sync::bulk::BULK_WAIT);
    if let Err(error) = controller.start_ha(&alarm) {
        let outcome = controller.abandon();
        return Err(Failure::Runtime(error.context(outcome)));
    }
    let trace_kernel = controller.take_trace().inspect_err(no_trace).ok();
    // The signal thread starts the hand-over itself: the owner may be busy.
    let hand_over = controller.ha_hand_over();
    let (events, results) = std::sync::mpsc::channel();
    controller.start_health(events);
    controller.start_announce();
    // From here on one thread owns the controller; every other thread
    // reaches it through a handle (see `crate::owner`).
    let (controller, _owner) = crate::owner::spawn(controller)
        .context("starting the controller thread")
        .map_err(Failure::Runtime)?;
    // The control socket last: once it answers, the data plane is ready.
    let server = match listen(&control, &controller) {
        Ok(server) => server,
        Err(error) => {
            let outcome = controller
                .stop(|mut c| c.abandon())
                .unwrap_or_else(|gone| format!("lb run did not start ({gone})"));
            return Err(Failure::Runtime(error.context(outcome)));
        }
    };
    let trace = start_trace(trace_kernel, &controller);
    spawn_ticker(controller.clone());
    spawn_attack_poller(controller.clone());
    spawn_hop_follower(controller.clone());
    spawn_agent_poller(controller.clone());
    spawn_health_applier(controller.clone(), results);
    let server_guard = server
        .spawn(controller.clone(), trace)
        .map_err(Failure::Runtime)?;
    tracing::info!(
        socket = %socket.display(),
        "running; SIGINT or SIGTERM stops, SIGHUP reloads, SIGQUIT exits leaving the data plane"
    );
    loop {
        let signal = wait_for(&signals);
        if signal == libc::SIGUSR1 {
            let Ok(why) = ha_stopped.try_recv() else {
                tracing::info!("SIGUSR1 ignored (lb raises it itself when an HA thread stops)");
                continue;
            };
            let failure = exit_for_stopped_ha(&why, &hand_over, &controller);
            drop(server_guard);
            return Err(failure);
        }
        if signal == libc::SIGHUP {
            reload_on_signal(&controller)?;
            continue;
        }
        if signal == libc::SIGQUIT {
            // Leave the data plane attached and pinned, forwarding with the
            // last tables: the next `lb run` takes it over. The floating IPs
            // go first, as on SIGTERM: the peer takes them over, and two
            // hosts must never answer ARP for one address.
            for hand_over in &hand_over {
                hand_over.request();
            }
            controller.stop(leave_attached).map_err(gone)?;
            tracing::info!("SIGQUIT: exiting, data plane left attached and pinned");
            drop(server_guard);
            return Ok(());
        }
        tracing::info!(signal, "stopping");
        for hand_over in &hand_over {
            hand_over.request();
        }
        break;
    }
    // The owner's last job: hand over HA first, then the clean stop.
    let counters = controller
        .stop(|mut c| {
            c.stop_ha();
            c.stop_sync();
            // Withdrawn first; the data plane keeps forwarding the flows
            // the upstream still sends here until it has moved them.
            if let Some(delay) = c.withdraw_all() {
                std::thread::sleep(delay);
            }
            let stopped = c
                .reason_counters()
                .and_then(|counters| c.stop().map(|()| counters));
            // As on SIGQUIT: the process exits next.
            std::mem::forget(c);
            stopped
        })
        .map_err(gone)?
        .map_err(Failure::Runtime)?;
    drop(server_guard);
    print_counters(&counters, output);
    Ok(())
}

/// Health results are applied one at a time, in order, by the owner; the
/// checker threads only probe.
fn spawn_health_applier(
    controller: ControllerHandle,
    results: std::sync::mpsc::Receiver<crate::health::Event>,
) {
    std::thread::spawn(move || {
        for event in results {
            let applied = controller.send(move |controller| {
                if let Err(error) = controller.on_health(&event) {
                    tracing::error!(error = %format!("{error:#}"), "applying a health change failed");
                }
            });
            if applied.is_err() {
                return;
            }
        }
    });
}

/// The alarm an HA instance raises when it can no longer run (one of its
/// threads stopped; it is in fault, its floating IPs removed), and where
/// `run` reads why: it cannot run again in this process, so `lb run`
/// exits non-zero for the service manager to restart it
/// ([`exit_for_stopped_ha`]).
fn ha_alarm() -> (crate::ha::Alarm, std::sync::mpsc::Receiver<String>) {
    let (stopped, ha_stopped) = std::sync::mpsc::channel::<String>();
    let alarm = crate::ha::Alarm::new(move |why| {
        // The receiver lives as long as `run`, which only returns after
        // the instances' threads have ended.
        let _ = stopped.send(why.to_string());
        // SAFETY: kill(2) on our own pid; SIGUSR1 is blocked in every
        // thread (`block_signals`) and taken by `wait_for`.
        unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    });
    (alarm, ha_stopped)
}

/// An HA instance can no longer run (`why`: one of its threads stopped;
/// it is in fault, its floating IPs removed). As on SIGQUIT the other
/// instances hand over and the data plane stays attached, as after a
/// crash; `lb run` exits 2 so that the service manager restarts it, and
/// the next run takes the data plane over.
fn exit_for_stopped_ha(
    why: &str,
    hand_over: &[crate::ha::HandOver],
    controller: &ControllerHandle,
) -> Failure {
    tracing::error!(%why, "ha: an instance cannot run any more; exiting with status 2 so \
        that the service manager restarts lb (data plane left attached)");
    for hand_over in hand_over {
        hand_over.request();
    }
    if let Err(error) = controller.stop(leave_attached) {
        return gone(error);
    }
    Failure::Runtime(anyhow::anyhow!(
        "ha: {why}; lb run exits so that the service manager restarts it"
    ))
}

/// The trace's reader thread, if the trace's maps were taken.
fn start_trace(
    kernel: Option<crate::trace::hub::Kernel>,
    controller: &ControllerHandle,
) -> Option<std::sync::Arc<crate::trace::hub::Hub>> {
    crate::trace::hub::spawn(kernel?, controller.clone())
        .inspect_err(no_trace)
        .ok()
}

/// `lb run` goes on without `lb trace`, saying why.
fn no_trace(error: &anyhow::Error) {
    tracing::warn!(error = %format!("{error:#}"), "lb trace unavailable");
}

/// Reads `guard.attack`'s counters every `attack::POLL` (an attack must be
/// seen within a second), on a thread of its own.
fn spawn_attack_poller(controller: ControllerHandle) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(crate::attack::POLL);
            let polled = controller.call(|controller| {
                if let Err(error) = controller.poll_attack() {
                    tracing::warn!(error = %format!("{error:#}"), "reading the attack counters failed");
                }
            });
            if let Err(OwnerError::Gone) = polled {
                return;
            }
        }
    });
}

/// Once a second: dynamic weights and the guard's denials; every tenth:
/// reconcile active flows with the connection table (walked on this
/// thread, not the owner's).
fn spawn_ticker(controller: ControllerHandle) {
    std::thread::spawn(move || {
        for second in 0u64.. {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if second % 10 == 9
                && let Err(error) = Controller::reconcile(&controller)
            {
                tracing::warn!(error = %format!("{error:#}"), "reconciling active flows failed");
            }
            let ticked = controller.call(|controller| {
                if let Err(error) = controller.tick() {
                    tracing::warn!(error = %format!("{error:#}"), "dynamic weights failed");
                }
                if let Err(error) = controller.poll_guard() {
                    tracing::warn!(error = %format!("{error:#}"), "reading the guard's denials failed");
                }
            });
            match ticked {
                Ok(()) => {}
                Err(OwnerError::Gone) => return,
                Err(error) => tracing::warn!(%error, "dynamic weights skipped"),
            }
        }
    });
}

/// Keeps the cached next hops current: re-resolves them whenever the kernel
/// reports a neighbour, route, address or link change, and every two
/// seconds regardless (a hop still being resolved, a missed notification).
/// The netlink lookups (next hops, routes, and the tunnels' default outer
/// sources) run on this thread's own resolver; only reading the targets
/// and writing the answers are the owner's jobs.
fn spawn_hop_follower(controller: ControllerHandle) {
    std::thread::spawn(move || {
        let mut monitor = match crate::netlink::Monitor::open() {
            Ok(monitor) => Some(monitor),
            Err(error) => {
                tracing::warn!(%error, "no netlink notifications: next hops refreshed every 2 s only");
                None
            }
        };
        let mut resolver = match crate::hops::Resolver::open() {
            Ok(resolver) => resolver,
            Err(error) => {
                tracing::warn!(%error, "no netlink: next hops not followed");
                return;
            }
        };
        // The first lookup at once: a hop still being resolved when the
        // start looked is written as soon as it resolves, and the
        // notification of its resolution may have come before the monitor
        // was open.
        let mut first = true;
        loop {
            let period = std::time::Duration::from_secs(2);
            if !std::mem::take(&mut first) {
                match monitor.as_mut().map(|m| m.wait(period)) {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => {
                        tracing::warn!(%error, "netlink notifications failed; polling instead");
                        monitor = None;
                    }
                    None => std::thread::sleep(period),
                }
            }
            let targets = match controller.call(|c| c.hop_targets()) {
                Ok(targets) => targets,
                Err(OwnerError::Gone) => return,
                Err(error) => {
                    tracing::warn!(%error, "next hops not refreshed");
                    continue;
                }
            };
            let Some(targets) = targets else {
                continue;
            };
            let lookup = resolver.lookup(&targets);
            if controller
                .send(move |c| {
                    c.write_hops(lookup);
                })
                .is_err()
            {
                return;
            }
        }
    });
}

/// Asks the `lb agent` of every `resource` backend for its load once a
/// second, on this thread; each answer is an event for the owner, read by
/// [`Controller::tick`].
fn spawn_agent_poller(controller: ControllerHandle) {
    std::thread::spawn(move || {
        loop {
            let targets = match controller.call(|c| c.agents()) {
                Ok(targets) => targets,
                Err(OwnerError::Gone) => return,
                Err(_) => Vec::new(),
            };
            for (key, address, secret) in targets {
                let load = crate::agent::query(address, secret.as_deref().map(String::as_str))
                    .map_err(|error| {
                        tracing::debug!(%address, error = %format!("{error:#}"), "agent unreachable");
                    })
                    .ok();
                if controller.send(move |c| c.set_load(key, load)).is_err() {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
}

/// The controller's owner gave no answer: it is gone (it stopped, or a job
/// panicked) or busy past [`crate::owner::CALL_TIMEOUT`].
fn gone(error: OwnerError) -> Failure {
    Failure::Runtime(anyhow::anyhow!("{error}"))
}

fn print_counters(counters: &BTreeMap<Reason, u64>, output: Output) {
    match output {
        Output::Human => {
            println!("{:<24} {:>12}", "reason", "packets");
            for (reason, packets) in counters {
                println!("{:<24} {packets:>12}", reason.name());
            }
        }
        Output::Json => {
            let reasons: serde_json::Map<String, serde_json::Value> = counters
                .iter()
                .map(|(reason, packets)| (reason.name().to_string(), (*packets).into()))
                .collect();
            println!("{}", serde_json::json!({ "reasons": reasons }));
        }
    }
}

fn reload(socket: &Path, output: Output) -> Result<(), Failure> {
    let answer = api::post(socket, "/v1/reload", &serde_json::json!({}))?;
    match output {
        Output::Json => println!("{answer}"),
        Output::Human => println!("reloaded ({} map writes)", answer["writes"]),
    }
    Ok(())
}

fn detach(config: Option<&Path>, instance: Option<&str>, output: Output) -> Result<(), Failure> {
    let name = match (config, instance) {
        (Some(path), _) => Config::load(path)?.instance.to_string(),
        (None, Some(name)) => crate::config::InstanceName::try_from(name.to_string())
            .map_err(|e| Failure::User(anyhow::anyhow!(e)))?
            .to_string(),
        (None, None) => {
            return Err(Failure::User(anyhow::anyhow!(
                "name the instance: `lb detach -c FILE` or `lb detach --instance NAME`"
            )));
        }
    };
    // A running instance is stopped with SIGTERM (which detaches), not
    // pulled from under its controller. Taking its lock also clears the
    // lock file a killed lb left (when this lock is dropped).
    let _lock = crate::lock::InstanceLock::acquire(
        Path::new(crate::lock::LOCK_ROOT),
        &name,
        Path::new(""),
    )
    .map_err(|error| match error {
        crate::lock::LockError::Held { holder, .. } => Failure::User(anyhow::anyhow!(
            "instance {name:?} is running ({holder}): `lb detach` would pull its data plane \
             from under it; stop it with SIGTERM instead, which detaches"
        )),
        other => Failure::Runtime(other.into()),
    })?;
    let pin_dir = Path::new(crate::controller::PIN_ROOT).join(&name);
    if !pin_dir.exists() {
        return Err(Failure::User(anyhow::anyhow!(
            "no pinned data plane for instance {name:?} (nothing in {})",
            pin_dir.display()
        )));
    }
    let detached = crate::dataplane::unpin_all(&pin_dir).map_err(Failure::Runtime)?;
    // The forwarding the data plane needed goes with it.
    crate::sysctl::restore_recorded(&name);
    match output {
        Output::Human => println!(
            "instance {name}: detached from {} and removed {}",
            if detached.is_empty() {
                "no interface".to_string()
            } else {
                detached.join(", ")
            },
            pin_dir.display()
        ),
        Output::Json => println!(
            "{}",
            serde_json::json!({"instance": name, "detached": detached, "pins": pin_dir.display().to_string()})
        ),
    }
    Ok(())
}

/// Before VRRP runs: floating IPs on the HA interface were left by a run
/// that never handed over (SIGKILL, a crash); this one starts as backup
/// and must not answer for them. Each removal is logged.
fn release_stale(config: &Config) -> Result<(), Failure> {
    let Some(section) = &config.ha else {
        return Ok(());
    };
    for ha in section.instances() {
        let removed = crate::release::release(&ha).map_err(|error| {
            Failure::Runtime(anyhow::Error::new(error).context(
                "ha: a floating IP a previous run left could not be removed; nothing was started",
            ))
        })?;
        for address in removed {
            tracing::warn!(%address, interface = %ha.interface,
                "ha: removed a floating IP left by a previous run (killed without handing over)");
        }
    }
    Ok(())
}

/// `lb release -c FILE`: what `lb run` does first, for the service manager
/// to run however the process ended. Exit 0 when nothing is held; 1 while
/// the instance runs (its floating IPs are its own to hand over).
fn release(path: &Path, output: Output) -> Result<(), Failure> {
    let config = Config::load(path)?;
    let name = config.instance.to_string();
    // Held: the instance runs. Taking it also clears the lock file a
    // killed lb left (when this lock is dropped).
    let _lock = crate::lock::InstanceLock::acquire(
        Path::new(crate::lock::LOCK_ROOT),
        &name,
        Path::new(""),
    )
    .map_err(|error| match error {
        crate::lock::LockError::Held { holder, .. } => Failure::User(anyhow::anyhow!(
            "instance {name:?} is running ({holder}): its floating IPs are its own; stop it \
             with SIGTERM, which hands them over"
        )),
        other => Failure::Runtime(other.into()),
    })?;
    let instances = config.ha.as_ref().map(Ha::instances).unwrap_or_default();
    let interface = config.ha.as_ref().map(|ha| ha.interface.clone());
    let mut nothing = "nothing to do (no ha section)".to_string();
    let mut removed = Vec::new();
    for ha in &instances {
        if ifindex(&ha.interface).is_err() {
            nothing = format!("nothing to do (no interface {})", ha.interface);
            continue;
        }
        nothing = format!("no floating IP on {}; nothing to do", ha.interface);
        removed.extend(crate::release::release(ha).map_err(|e| Failure::Runtime(e.into()))?);
    }
    let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"instance": name, "interface": interface, "removed": removed})
        ),
        Output::Human if removed.is_empty() => println!("instance {name}: {nothing}"),
        Output::Human => println!(
            "instance {name}: removed {} from {}",
            removed.join(", "),
            interface.unwrap_or_default()
        ),
    }
    Ok(())
}

/// bpffs directory of `lb decap` attachments.
const DECAP_PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";

/// Where `lb decap` pins its attachment: unique per network namespace (the
/// namespace's inode) and interface, since backends on one host share bpffs.
fn decap_pin(interface: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata("/proc/self/ns/net")
        .context("reading /proc/self/ns/net")?
        .ino();
    // Beside the instances' directory, so no instance name can clash.
    Ok(Path::new(DECAP_PIN_ROOT).join(format!("{netns}-{interface}")))
}

fn decap(action: DecapAction, interface: &str, output: Output) -> Result<(), Failure> {
    ifindex(interface).map_err(Failure::User)?;
    let pin = decap_pin(interface).map_err(Failure::Runtime)?;
    match action {
        DecapAction::Attach => {
            if pin.exists() {
                return Err(Failure::User(anyhow::anyhow!(
                    "lb_decap is already attached to {interface} (pinned at {}); \
                     `lb decap detach {interface}` first",
                    pin.display()
                )));
            }
            let mut dataplane = Dataplane::load_decap()
                .context("loading lb_decap")
                .map_err(Failure::Runtime)?;
            let (link, mode) = dataplane
                .attach(interface, AttachMode::Auto)
                .with_context(|| format!("attaching lb_decap to {interface}"))
                .map_err(Failure::Runtime)?;
            if let Some(dir) = pin.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))
                    .map_err(Failure::Runtime)?;
            }
            dataplane.pin_link(link, &pin).map_err(Failure::Runtime)?;
            match output {
                Output::Human => println!(
                    "lb_decap attached to {interface} ({mode:?} XDP), pinned at {}",
                    pin.display()
                ),
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"attached": interface, "mode": format!("{mode:?}").to_lowercase(),
                                       "pin": pin.display().to_string()})
                ),
            }
        }
        DecapAction::Detach => {
            if !pin.exists() {
                return Err(Failure::User(anyhow::anyhow!(
                    "lb_decap is not attached to {interface} (no pin at {})",
                    pin.display()
                )));
            }
            unpin_link(&pin).map_err(Failure::Runtime)?;
            match output {
                Output::Human => println!("lb_decap detached from {interface}"),
                Output::Json => println!("{}", serde_json::json!({ "detached": interface })),
            }
        }
    }
    Ok(())
}

/// Blocks SIGINT, SIGTERM, SIGHUP, SIGQUIT and SIGUSR1 in this (and every later) thread so they
/// can be taken synchronously with `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use,
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGHUP);
        libc::sigaddset(&raw mut set, libc::SIGQUIT);
        // Raised by the HA alarm (`run`).
        libc::sigaddset(&raw mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` was initialised by `block_signals`; `signal` is a valid
    // out-pointer.
    unsafe { libc::sigwait(set, &raw mut signal) };
    signal
}
