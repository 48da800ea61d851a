//! The flood generator ([`lb_tests::flood`]) from the command line; `cargo
//! xtask flood --help` documents it and runs this. Arguments, each as
//! `--name value`: `--netns NS` (optional: the namespace to send from),
//! `--interface IF`, `--dst-mac MAC`, `--to ADDR:PORT`, `--from PREFIX`
//! (default 198.51.100.128/25), `--kind syn|udp`, `--count N`, `--seconds
//! S`, `--payload BYTES`, `--rate FRAMES_PER_SECOND`, and the flag
//! `--packet-only`. Destinations and sources outside the documentation
//! ranges are refused.

use std::{net::SocketAddrV4, os::fd::AsRawFd, process::ExitCode, time::Duration};

use lb_tests::flood::{self, Kind, Prefix, Spec};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flood: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut netns = None;
    let mut interface = None;
    let mut dst_mac = None;
    let mut to = None;
    let mut from = None;
    let mut kind = Kind::Syn;
    let mut count = 1_000_000u64;
    let mut seconds = 10.0f64;
    let mut payload = 18usize;
    let mut packet_only = false;
    let mut rate = None;
    while let Some(name) = args.next() {
        if name == "--packet-only" {
            packet_only = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{name} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{name} {value}: {e}");
        match name.as_str() {
            "--netns" => netns = Some(value),
            "--interface" => interface = Some(value),
            "--dst-mac" => dst_mac = Some(parse_mac(&value).ok_or_else(|| bad(&"not a MAC"))?),
            "--to" => to = Some(value.parse::<SocketAddrV4>().map_err(|e| bad(&e))?),
            "--from" => from = Some(value.parse::<Prefix>().map_err(|e| bad(&e))?),
            "--kind" => kind = value.parse().map_err(|e: String| bad(&e))?,
            "--count" => count = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => seconds = value.parse().map_err(|e| bad(&e))?,
            "--payload" => payload = value.parse().map_err(|e| bad(&e))?,
            "--rate" => rate = Some(value.parse().map_err(|e| bad(&e))?),
            _ => return Err(format!("unknown argument {name}")),
        }
    }
    let interface = interface.ok_or("--interface is required")?;
    let mut spec = Spec::new(
        &interface,
        dst_mac.ok_or("--dst-mac is required")?,
        from.unwrap_or(Prefix {
            network: std::net::Ipv4Addr::new(198, 51, 100, 128),
            len: 25,
        }),
        to.ok_or("--to is required")?,
        kind,
        count,
        Duration::try_from_secs_f64(seconds).map_err(|e| format!("--seconds: {e}"))?,
    );
    spec.payload = payload;
    spec.packet_only = packet_only;
    spec.rate = rate;
    spec.check()?;
    if let Some(netns) = &netns {
        let path = if netns.contains('/') {
            netns.clone()
        } else {
            format!("/run/netns/{netns}")
        };
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: an open namespace descriptor; this process has one
        // thread, which moves into it.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "entering {path}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    println!(
        "flooding {} with {} from {} out of {interface}{}: at most {count} frames, {seconds} s",
        spec.to,
        match kind {
            Kind::Syn => "TCP SYNs",
            Kind::Udp => "UDP datagrams",
        },
        spec.from,
        netns
            .map(|ns| format!(" (namespace {ns})"))
            .unwrap_or_default()
    );
    let stats = flood::run(&spec, None).map_err(|e| e.to_string())?;
    println!("{stats}");
    Ok(())
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
