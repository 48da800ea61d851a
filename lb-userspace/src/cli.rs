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

use crate::{
    api,
    config::{Config, ConfigError, default_socket},
    controller::{Controller, StatsReport, StatusReport},
    dataplane::{AttachMode, Dataplane, unpin_link},
    netlink::ifindex,
    owner::{ControllerHandle, OwnerError},
};

/// lb: an XDP layer-4 load balancer.
#[derive(Debug, Parser)]
#[command(name = "lb", version, about, propagate_version = true)]
pub struct Cli {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    pub output: Output,
    /// Log format of `lb run`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Control socket of the running controller.
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
    /// Run the balancer: attach, write the maps, run until SIGINT/SIGTERM.
    #[command(after_help = "Example:\n  lb run -c /etc/lb/lb.yaml")]
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration; exit 1 listing every problem.
    #[command(after_help = "Example:\n  lb check -c /etc/lb/lb.yaml")]
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Services and backends (health, weight, tier) and HA state.
    #[command(after_help = "Example:\n  lb status\n  lb status --output json")]
    Status {
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Counters per service, per backend and per verdict reason.
    #[command(after_help = "Example:\n  lb stats\n  lb stats --output json")]
    Stats {
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Refresh every second in place, with per-second rates (like `top`);
        /// with `--output json`, one JSON line per second.
        #[arg(long)]
        watch: bool,
        /// With `--watch`: stop after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Stop new flows to a backend; its established flows finish.
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
    /// Undo `lb drain`.
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
    /// Set a backend's weight (until a reload changes that backend).
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
    /// The junk-traffic guard at runtime: list what is denied, deny or
    /// allow a source prefix (runtime denials last until a restart).
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
    /// Re-read the configuration (as SIGHUP does); a bad file changes nothing.
    #[command(after_help = "Example:\n  lb reload")]
    Reload {
        /// Take the control socket from this configuration.
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// On a backend: report its load for the `resource` scheduler.
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
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  lb completions bash > /etc/bash_completion.d/lb")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Remove the XDP program and the pinned state of an instance (also one
    /// left running by SIGQUIT or a crash). Interrupts its traffic.
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
    /// Remove the configured floating IPs from the HA interface, where a
    /// killed or crashed `lb run` left them (the unit's `ExecStopPost=`).
    /// Refused while the instance runs.
    #[command(after_help = "Example:\n  lb release -c /etc/lb/lb.yaml")]
    Release {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// On a backend: strip IPIP / IP6IP6 in XDP (tunnel mode).
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
        Command::Status { config } => {
            socket(cli.socket.as_deref(), config.as_deref()).and_then(|s| status(&s, output))
        }
        Command::Stats {
            config,
            watch,
            count,
        } => socket(cli.socket.as_deref(), config.as_deref()).and_then(|s| {
            if *watch {
                watch_stats(&s, output, *count)
            } else {
                stats(&s, output)
            }
        }),
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
        Command::Detach { config, instance } => {
            detach(config.as_deref(), instance.as_deref(), output)
        }
        Command::Release { config } => release(config, output),
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
        }
        Output::Json => {
            warnings.extend(host);
            println!(
                "{}",
                serde_json::json!({"ok": true, "services": config.services.len(),
                                   "interfaces": config.interfaces.len(),
                                   "warnings": problems_json(&warnings)})
            );
        }
    }
    Ok(())
}

/// Problems as JSON: `[{"path", "line", "message"}]`.
fn problems_json(problems: &[crate::config::ConfigProblem]) -> serde_json::Value {
    problems
        .iter()
        .map(|p| serde_json::json!({"path": p.path, "line": p.line, "message": p.message}))
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
        tracing::warn!(path = %warning.path, line = ?warning.line, "{}", warning.message);
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

/// `lb run`: [`prepare_run`], then the data plane, VRRP, the metrics
/// listener and last the control socket — a failure there is undone before
/// exit 2 (see [`Controller::start`]).
fn run(path: &Path, output: Output) -> Result<(), Failure> {
    let (config, _lock) = prepare_run(path)?;
    release_stale(&config)?;
    let socket = config.control.socket.clone();
    let signals = block_signals();
    let metrics_address = config.control.metrics;
    let mut controller = Controller::start(config, path).map_err(Failure::Runtime)?;
    if let Err(error) = controller.start_ha() {
        let outcome = controller.abandon();
        return Err(Failure::Runtime(error.context(outcome)));
    }
    // The signal thread starts the hand-over itself: the owner may be busy.
    let hand_over = controller.ha_hand_over();
    let (events, results) = std::sync::mpsc::channel();
    controller.start_health(events);
    // From here on one thread owns the controller; every other thread
    // reaches it through a handle (see `crate::owner`).
    let (controller, _owner) = crate::owner::spawn(controller)
        .context("starting the controller thread")
        .map_err(Failure::Runtime)?;
    // The control socket last: once it answers, the data plane is ready.
    let listening = metrics_address
        .map_or(Ok(()), |address| {
            crate::metrics::serve(address, controller.clone())?;
            tracing::info!(%address, "metrics at /metrics");
            Ok(())
        })
        .and_then(|()| api::Server::bind(&socket));
    let server = match listening {
        Ok(server) => server,
        Err(error) => {
            let outcome = controller
                .stop(|mut c| c.abandon())
                .unwrap_or_else(|gone| format!("lb run did not start ({gone})"));
            return Err(Failure::Runtime(error.context(outcome)));
        }
    };
    spawn_ticker(controller.clone());
    spawn_hop_follower(controller.clone());
    spawn_agent_poller(controller.clone());
    // Health results are applied one at a time, in order, by the owner;
    // the checker threads only probe.
    let health = controller.clone();
    std::thread::spawn(move || {
        for event in results {
            let applied = health.send(move |controller| {
                if let Err(error) = controller.on_health(&event) {
                    tracing::error!(error = %format!("{error:#}"), "applying a health change failed");
                }
            });
            if applied.is_err() {
                return;
            }
        }
    });
    let server_guard = server.spawn(controller.clone()).map_err(Failure::Runtime)?;
    tracing::info!(
        socket = %socket.display(),
        "running; SIGINT or SIGTERM stops, SIGHUP reloads, SIGQUIT exits leaving the data plane"
    );
    loop {
        let signal = wait_for(&signals);
        if signal == libc::SIGHUP {
            tracing::info!("SIGHUP: reloading");
            // An event like any other: applied in its turn, its outcome
            // logged by the owner.
            controller
                .send(|c| {
                    if let Err(error) = c.reload() {
                        tracing::error!(error = %format!("{error:#}"), "reload refused; nothing changed");
                    }
                })
                .map_err(gone)?;
            continue;
        }
        if signal == libc::SIGQUIT {
            // Leave the data plane attached and pinned, forwarding with the
            // last tables: the next `lb run` takes it over. The floating IPs
            // go first, as on SIGTERM: the peer takes them over, and two
            // hosts must never answer ARP for one address.
            if let Some(hand_over) = &hand_over {
                hand_over.request();
            }
            controller
                .stop(|mut c| {
                    c.stop_ha();
                    // Kept to the end: the process exits next, and dropping
                    // would wait for the health probes in flight.
                    std::mem::forget(c);
                })
                .map_err(gone)?;
            tracing::info!("SIGQUIT: exiting, data plane left attached and pinned");
            drop(server_guard);
            return Ok(());
        }
        tracing::info!(signal, "stopping");
        if let Some(hand_over) = &hand_over {
            hand_over.request();
        }
        break;
    }
    // The owner's last job: hand over HA first, then the clean stop.
    let counters = controller
        .stop(|mut c| {
            c.stop_ha();
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
/// The netlink lookups run on this thread's own resolver; only reading the
/// backends and writing the answers are the owner's jobs.
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
        loop {
            let period = std::time::Duration::from_secs(2);
            match monitor.as_mut().map(|m| m.wait(period)) {
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "netlink notifications failed; polling instead");
                    monitor = None;
                }
                None => std::thread::sleep(period),
            }
            let targets = match controller.call(|c| c.hop_targets()) {
                Ok(targets) => targets,
                Err(OwnerError::Gone) => return,
                Err(error) => {
                    tracing::warn!(%error, "next hops not refreshed");
                    continue;
                }
            };
            let Some((backends, nat)) = targets else {
                continue;
            };
            let lookup = resolver.lookup(&backends, nat);
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

fn status(socket: &Path, output: Output) -> Result<(), Failure> {
    let value = api::get(socket, "/v1/status")?;
    if output == Output::Json {
        println!("{value}");
        return Ok(());
    }
    let report: StatusReport = serde_json::from_value(value)
        .context("the controller's status has an unexpected shape")
        .map_err(Failure::Runtime)?;
    println!(
        "instance {}   ha: {} ({})",
        report.instance, report.ha.state, report.ha.reason
    );
    if report.guard.auto || !report.guard.configured.is_empty() || !report.guard.runtime.is_empty()
    {
        println!();
        print_guard(&report.guard);
    }
    for service in &report.services {
        let tier = service
            .active_tier
            .map_or_else(|| "none: no usable backend".to_string(), |t| t.to_string());
        println!(
            "\n{}  {} {}:{}  {} / {}  active tier {tier}",
            service.name,
            service.protocol,
            service.vip,
            service.port,
            service.scheduler,
            service.forwarding
        );
        for warning in &service.warnings {
            println!("  warning: {warning}");
        }
        if service.backends.is_empty() {
            continue;
        }
        // Flows in dsr / tunnel modes are counted from one direction only.
        let flows = if service.forwarding == "nat" {
            "flows"
        } else {
            "flows~"
        };
        println!(
            "  {:<32} {:>4} {:>6} {:>9} {:>7} {:>7} {:>6}  last check",
            "backend", "tier", "weight", "effective", "health", "drained", flows
        );
        for b in &service.backends {
            let last = b.last_check.as_ref().map_or_else(
                || "-".to_string(),
                |c| format!("{} ({:.1} ms)", c.detail, c.latency_ms),
            );
            println!(
                "  {:<32} {:>4} {:>6} {:>9} {:>7} {:>7} {:>6}  {last}",
                format!("{}:{}", b.address, b.port),
                b.tier,
                b.weight,
                b.effective_weight,
                b.health,
                if b.drained { "yes" } else { "no" },
                b.active_flows
                    .map_or_else(|| "-".to_string(), |f| f.to_string()),
            );
        }
    }
    Ok(())
}

fn stats(socket: &Path, output: Output) -> Result<(), Failure> {
    let value = api::get(socket, "/v1/stats")?;
    if output == Output::Json {
        println!("{value}");
        return Ok(());
    }
    let report: StatsReport = serde_json::from_value(value)
        .context("the controller's stats have an unexpected shape")
        .map_err(Failure::Runtime)?;
    println!(
        "{:<44} {:>12} {:>14} {:>10}",
        "service / backend", "packets", "bytes", "new flows"
    );
    for service in &report.services {
        println!(
            "{:<44} {:>12} {:>14} {:>10}",
            service.name, service.packets, service.bytes, service.new_flows
        );
        for b in &service.backends {
            println!(
                "  {:<42} {:>12} {:>14} {:>10}",
                format!("{}:{}", b.address, b.port),
                b.packets,
                b.bytes,
                b.new_flows
            );
        }
    }
    println!("\n{:<44} {:>12}", "verdict reason", "packets");
    for (reason, packets) in &report.reasons {
        println!("{reason:<44} {packets:>12}");
    }
    let table = &report.connection_table;
    match table.entries {
        Some(entries) => println!(
            "\nconnection table: {entries} of {} entries at the last walk; LRU evictions \
             since start (estimated from {} walks): {} to {}",
            table.capacity, table.walks, table.evictions_at_least, table.evictions_at_most
        ),
        None => println!(
            "\nconnection table: {} entries at most; not walked yet (every 10 s), \
             no eviction estimate",
            table.capacity
        ),
    }
    Ok(())
}

/// `lb stats --watch`: a live table of per-second rates, redrawn in place.
fn watch_stats(socket: &Path, output: Output, count: Option<u64>) -> Result<(), Failure> {
    let fetch = || -> Result<StatsReport, Failure> {
        let value = api::get(socket, "/v1/stats")?;
        serde_json::from_value(value)
            .context("the controller's stats have an unexpected shape")
            .map_err(Failure::Runtime)
    };
    let mut previous = fetch()?;
    let mut shown = 0;
    while count.is_none_or(|count| shown < count) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let current = fetch()?;
        let rows = rates(&previous, &current);
        match output {
            Output::Json => {
                let rows: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(name, pps, bps, fps)| {
                        serde_json::json!({"name": name, "packets_per_second": pps,
                                           "bytes_per_second": bps, "new_flows_per_second": fps})
                    })
                    .collect();
                println!("{}", serde_json::json!({ "rates": rows }));
            }
            Output::Human => {
                // Home and clear: redraw in place, like `top`.
                print!("\x1b[H\x1b[2J");
                println!(
                    "lb stats --watch ({}), per second; Ctrl-C to stop\n",
                    socket.display()
                );
                println!(
                    "{:<44} {:>12} {:>14} {:>10}",
                    "", "packets/s", "bytes/s", "flows/s"
                );
                for (name, pps, bps, fps) in &rows {
                    println!("{name:<44} {pps:>12} {bps:>14} {fps:>10}");
                }
            }
        }
        std::io::Write::flush(&mut std::io::stdout()).ok();
        previous = current;
        shown += 1;
    }
    Ok(())
}

/// Per-second rows (name, packets, bytes, new flows) between two reports
/// one second apart: services, their backends (indented), then every
/// verdict reason that moved.
fn rates(previous: &StatsReport, current: &StatsReport) -> Vec<(String, u64, u64, u64)> {
    let mut rows = Vec::new();
    for service in &current.services {
        let before = previous.services.iter().find(|s| s.name == service.name);
        rows.push((
            service.name.clone(),
            service.packets - before.map_or(service.packets, |b| b.packets.min(service.packets)),
            service.bytes - before.map_or(service.bytes, |b| b.bytes.min(service.bytes)),
            service.new_flows
                - before.map_or(service.new_flows, |b| b.new_flows.min(service.new_flows)),
        ));
        for backend in &service.backends {
            let before = before.and_then(|b| {
                b.backends
                    .iter()
                    .find(|x| x.address == backend.address && x.port == backend.port)
            });
            rows.push((
                format!("  {}:{}", backend.address, backend.port),
                backend.packets
                    - before.map_or(backend.packets, |b| b.packets.min(backend.packets)),
                backend.bytes - before.map_or(backend.bytes, |b| b.bytes.min(backend.bytes)),
                backend.new_flows
                    - before.map_or(backend.new_flows, |b| b.new_flows.min(backend.new_flows)),
            ));
        }
    }
    for (reason, packets) in &current.reasons {
        let moved = packets
            - previous
                .reasons
                .get(reason)
                .copied()
                .unwrap_or(0)
                .min(*packets);
        if moved > 0 {
            rows.push((reason.clone(), moved, 0, 0));
        }
    }
    rows
}

fn change_backend(
    socket: &Path,
    path: &str,
    service: &str,
    backend: &str,
    weight: Option<u32>,
    output: Output,
) -> Result<(), Failure> {
    let body = serde_json::json!({ "service": service, "backend": backend, "weight": weight });
    let status = api::post(socket, path, &body)?;
    match output {
        Output::Json => println!("{status}"),
        Output::Human => println!(
            "{service} {}:{}: weight {} (effective {}), {}, health {}",
            status["address"].as_str().unwrap_or("?"),
            status["port"],
            status["weight"],
            status["effective_weight"],
            if status["drained"] == true {
                "drained"
            } else {
                "not drained"
            },
            status["health"].as_str().unwrap_or("?"),
        ),
    }
    Ok(())
}

/// `lb guard list|deny|allow`: each prints the guard report after it.
fn guard(socket: &Path, action: &GuardAction, output: Output) -> Result<(), Failure> {
    let value = match action {
        GuardAction::List => api::get(socket, "/v1/guard")?,
        GuardAction::Deny { prefix } => api::post(
            socket,
            "/v1/guard/deny",
            &serde_json::json!({ "prefix": prefix.to_string() }),
        )?,
        GuardAction::Allow { prefix } => api::post(
            socket,
            "/v1/guard/allow",
            &serde_json::json!({ "prefix": prefix.to_string() }),
        )?,
    };
    if output == Output::Json {
        println!("{value}");
        return Ok(());
    }
    let report: crate::guard::GuardReport = serde_json::from_value(value)
        .context("the controller's guard report has an unexpected shape")
        .map_err(Failure::Runtime)?;
    print_guard(&report);
    Ok(())
}

/// The guard report for people (`lb guard list`, `lb status`).
fn print_guard(report: &crate::guard::GuardReport) {
    let list = |prefixes: &[String]| {
        if prefixes.is_empty() {
            "none".to_string()
        } else {
            prefixes.join(", ")
        }
    };
    println!("deny (file):    {}", list(&report.configured));
    println!("deny (runtime): {}", list(&report.runtime));
    let totals: Vec<String> = report
        .denials_total
        .iter()
        .map(|(cause, n)| format!("{cause} {n}"))
        .collect();
    println!(
        "automatic:      {} ({} denied now; since start: {})",
        if report.auto { "on" } else { "off" },
        report.denied.len(),
        totals.join(", ")
    );
    for denial in &report.denied {
        println!(
            "  {:<40} {:<10} vip {:<40} {:>6}s left",
            denial.source,
            denial.cause.name(),
            denial.vip,
            denial.expires_in_seconds
        );
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
    let Some(ha) = &config.ha else {
        return Ok(());
    };
    let removed = crate::release::release(ha).map_err(|error| {
        Failure::Runtime(anyhow::Error::new(error).context(
            "ha: a floating IP a previous run left could not be removed; nothing was started",
        ))
    })?;
    for address in removed {
        tracing::warn!(%address, interface = %ha.interface,
            "ha: removed a floating IP left by a previous run (killed without handing over)");
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
    let (interface, removed, nothing) = match &config.ha {
        None => (
            None,
            Vec::new(),
            "nothing to do (no ha section)".to_string(),
        ),
        Some(ha) if ifindex(&ha.interface).is_err() => (
            Some(ha.interface.as_str()),
            Vec::new(),
            format!("nothing to do (no interface {})", ha.interface),
        ),
        Some(ha) => (
            Some(ha.interface.as_str()),
            crate::release::release(ha).map_err(|e| Failure::Runtime(e.into()))?,
            format!("no floating IP on {}; nothing to do", ha.interface),
        ),
    };
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

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in this (and every later) thread so they
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
