//! The `lb` command line. Exit codes: 0 ok, 1 user error (bad arguments, bad
//! config), 2 runtime error (kernel refused, interface missing, ...).

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_common::{Reason, ServiceKey, ServiceValue, maps::ipv4_mapped};

use crate::{
    config::{Config, ConfigError, XdpModeSetting},
    dataplane::{AttachMode, Dataplane, Sizes},
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
}

/// A failure, classified for the exit code.
#[derive(Debug)]
enum Failure {
    User(anyhow::Error),
    Runtime(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Failure::User(error.into())
    }
}

/// Entry point of the `lb` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match &cli.command {
        Command::Run { config } => run(config, cli.output),
        Command::Check { config } => check(config, cli.output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::User(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check(path: &std::path::Path, output: Output) -> Result<(), Failure> {
    let config = Config::load(path)?;
    match output {
        Output::Human => println!(
            "{}: ok ({} service(s), {} interface(s))",
            path.display(),
            config.services.len(),
            config.interfaces.len()
        ),
        Output::Json => println!(
            "{}",
            serde_json::json!({"ok": true, "services": config.services.len(),
                               "interfaces": config.interfaces.len()})
        ),
    }
    Ok(())
}

fn run(path: &std::path::Path, output: Output) -> Result<(), Failure> {
    let config = Config::load(path)?;
    let signals = block_stop_signals();
    let mut dataplane = Dataplane::load(Sizes::default())
        .context("loading the XDP program (are you root, on Linux 5.x or later?)")
        .map_err(Failure::Runtime)?;
    install_services(&mut dataplane, &config).map_err(Failure::Runtime)?;
    let mut links = Vec::new();
    for iface in &config.interfaces {
        let ifindex = ifindex(&iface.name).map_err(Failure::Runtime)?;
        let mac = mac_address(&iface.name).map_err(Failure::Runtime)?;
        dataplane
            .insert_iface(ifindex, mac)
            .map_err(|e| Failure::Runtime(e.into()))?;
        let mode = match iface.xdp_mode {
            XdpModeSetting::Auto => AttachMode::Auto,
            XdpModeSetting::Native => AttachMode::Native,
            XdpModeSetting::Generic => AttachMode::Generic,
        };
        let (link, attached) = dataplane
            .attach(&iface.name, mode)
            .with_context(|| format!("attaching to {}", iface.name))
            .map_err(Failure::Runtime)?;
        tracing::info!(interface = %iface.name, mode = ?attached, "attached");
        links.push(link);
    }
    tracing::info!(
        instance = %config.instance,
        services = config.services.len(),
        "running; SIGINT or SIGTERM stops"
    );
    let signal = wait_for(&signals);
    tracing::info!(signal, "stopping");
    let counters = dataplane
        .reason_counters()
        .map_err(|e| Failure::Runtime(e.into()))?;
    for link in links {
        dataplane
            .detach(link)
            .map_err(|e| Failure::Runtime(e.into()))?;
    }
    print_counters(&counters, output);
    Ok(())
}

/// Writes SERVICES and VIPS from the configuration.
fn install_services(dataplane: &mut Dataplane, config: &Config) -> anyhow::Result<()> {
    let mut vips: BTreeMap<[u8; 16], u32> = BTreeMap::new();
    for (id, service) in config.services.iter().enumerate() {
        let vip = map_addr(service.vip);
        let key = ServiceKey::new(vip, service.port, service.protocol.number());
        let value = ServiceValue {
            id: u32::try_from(id).context("too many services")?,
            flags: 0,
        };
        dataplane.insert_service(key, value)?;
        *vips.entry(vip).or_default() += 1;
    }
    for (vip, count) in vips {
        dataplane.insert_vip(vip, count)?;
    }
    Ok(())
}

/// An address in map form (IPv4 as IPv4-mapped IPv6).
pub fn map_addr(addr: std::net::IpAddr) -> [u8; 16] {
    match addr {
        std::net::IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
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

fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c_name = std::ffi::CString::new(name).context("interface name contains NUL")?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        anyhow::bail!("interface {name:?} does not exist");
    }
    Ok(index)
}

/// The interface's MAC address, asked of the kernel through a socket in the
/// current network namespace (sysfs would show the namespace that mounted it,
/// which differs under `nsenter --net`).
fn mac_address(name: &str) -> anyhow::Result<[u8; 6]> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        anyhow::bail!("interface name {name:?} is too long");
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    // SAFETY: plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a socket for SIOCGIFHWADDR");
    }
    // SAFETY: `request` is a valid ifreq with a NUL-terminated name, which
    // SIOCGIFHWADDR fills in; `fd` is an open socket.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &raw mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed exactly once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(error).with_context(|| format!("reading the MAC address of {name}"));
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the hwaddr member is the one set.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = src.cast_unsigned();
    }
    Ok(mac)
}

/// Blocks SIGINT and SIGTERM in this (and every later) thread so they can be
/// taken synchronously with `sigwait`.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use,
    // and pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut());
        set
    }
}

fn wait_for(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` was initialised by `block_stop_signals`; `signal` is a
    // valid out-pointer.
    unsafe { libc::sigwait(set, &raw mut signal) };
    signal
}
