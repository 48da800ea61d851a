//! What `lb status`, `lb ha`, `lb stats` (and `--watch`), `lb guard`,
//! `lb route` and `lb trace` ask the running `lb run`, and how they print
//! it for people (`--output json` prints the API's JSON as it is).

use super::*;

/// `lb status [SERVICE...]`. The JSON is printed as the controller wrote
/// it (not parsed and written again); people's view reads it straight
/// into the report.
pub(super) fn status(socket: &Path, services: &[String], output: Output) -> Result<(), Failure> {
    let text = api::get_text(socket, &api::with_services("/v1/status", services))?;
    if output == Output::Json {
        print_json(&text);
        return Ok(());
    }
    let report: StatusReport = serde_json::from_str(&text)
        .context("the controller's status has an unexpected shape")
        .map_err(Failure::Runtime)?;
    println!(
        "instance {}   ha: {} ({})",
        report.instance, report.ha.state, report.ha.reason
    );
    print_ha(&report.ha, "  ");
    if report.guard.auto || !report.guard.configured.is_empty() || !report.guard.runtime.is_empty()
    {
        println!();
        print_guard(&report.guard);
    }
    if report.attack.configured {
        print_attack(&report.attack);
    }
    if let Some(announce) = &report.announce {
        print_announce(announce);
    }
    if let Some(sync) = &report.sync {
        print_sync(sync);
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

/// The `attack` part of `lb status` (`guard.attack`): one line per VIP
/// with its state, since when, and the last second's rates.
fn print_attack(attack: &crate::attack::AttackReport) {
    let under = attack.vips.iter().filter(|v| v.under_attack).count();
    println!(
        "\nguard.attack: {under} VIP(s) under attack now, {} attack(s) since start",
        attack.attacks_total
    );
    let now = u64::try_from(unix_now_ns() / 1_000_000_000).unwrap_or(0);
    for vip in &attack.vips {
        let state = match vip.since_unix {
            Some(since) if vip.under_attack => format!(
                "UNDER ATTACK for {}s: new SYNs pass only from proven sources",
                now.saturating_sub(since)
            ),
            _ => "calm".to_string(),
        };
        println!(
            "  {:<24} {state}; {:.0} new flows/s, {:.0} SYNs/s, {:.0} % half-open",
            vip.vip,
            vip.rates.new_flows_per_second,
            vip.rates.syns_per_second,
            vip.rates.half_open_share * 100.0
        );
    }
}

/// The `sync` part of `lb status`: one line for the exchange, one per
/// peer, and the refusals that happened.
fn print_sync(sync: &crate::sync::status::SyncStatus) {
    let (sent, received, installed) = sync.totals();
    println!(
        "\nsync on {} port {}: {sent} sent, {received} received, {installed} installed, \
         {} events lost, peers' share {} of {}",
        sync.interface, sync.port, sync.events_lost, sync.peer_entries, sync.peer_capacity
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for peer in &sync.peers {
        let heard = peer.last_message_ms.map_or_else(
            || "never heard".to_string(),
            |at| format!("heard {} ms ago", now_ms.saturating_sub(at)),
        );
        println!(
            "  peer {:<39} {heard}; {} sent, {} received, {} installed, {} already here, \
             {} closed",
            peer.address, peer.sent, peer.received, peer.installed, peer.existing, peer.closed
        );
    }
    match &sync.last_bulk {
        Some(bulk) => println!(
            "  last whole table from {} {} ms ago: {} entries, {} installed, {} ms after start; \
             {} sent to peers, {} requests declined",
            bulk.from,
            now_ms.saturating_sub(bulk.at_ms),
            bulk.entries,
            bulk.installed,
            bulk.took_ms,
            sync.bulk_served,
            sync.bulk_declined
        ),
        None => println!(
            "  no whole table from a peer yet; {} sent to peers, {} requests declined",
            sync.bulk_served, sync.bulk_declined
        ),
    }
    let refused: Vec<String> = sync
        .refused
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    if !refused.is_empty() {
        println!("  refused: {}", refused.join(", "));
    }
}

/// The `announce` part of `lb status`: per VIP, announced or withdrawn
/// and why.
pub(super) fn print_announce(announce: &crate::report::AnnounceStatus) {
    println!(
        "\nannounce through BIRD ({}, include {}): {} update(s){}",
        announce.bird_socket,
        announce.bird_include,
        announce.bird_updates,
        announce
            .bird_error
            .as_ref()
            .map_or_else(String::new, |e| format!("; last attempt failed: {e}"))
    );
    for vip in &announce.vips {
        let a = &vip.announcement;
        let state = if a.diverted {
            "diverted".to_string()
        } else {
            a.state.name().to_string()
        };
        let communities: Vec<String> = a.communities.iter().map(ToString::to_string).collect();
        let mut attributes = Vec::new();
        if !communities.is_empty() {
            attributes.push(format!("communities {}", communities.join(" ")));
        }
        if let Some(med) = a.med {
            attributes.push(format!("med {med}"));
        }
        if let Some(local_pref) = a.local_pref {
            attributes.push(format!("local_pref {local_pref}"));
        }
        println!("  {:<40} {:<10} {}", a.vip.to_string(), state, a.reason);
        if !attributes.is_empty() {
            println!("  {:<40} {:<10} {}", "", "", attributes.join(", "));
        }
    }
}

/// `lb stats [SERVICE...]`, printed as [`status`] is.
pub(super) fn stats(socket: &Path, services: &[String], output: Output) -> Result<(), Failure> {
    let text = api::get_text(socket, &api::with_services("/v1/stats", services))?;
    if output == Output::Json {
        print_json(&text);
        return Ok(());
    }
    let report: StatsReport = serde_json::from_str(&text)
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
             since start (estimated from {} walks): {} to {}, of established flows at \
             least {}",
            table.capacity,
            table.walks,
            table.evictions_at_least,
            table.evictions_at_most,
            table.established_evictions_at_least
        ),
        None => println!(
            "\nconnection table: {} entries at most; not walked yet (every 10 s), \
             no eviction estimate",
            table.capacity
        ),
    }
    Ok(())
}

/// `lb stats --watch`: per-second rates every second ([`crate::watch`]).
/// On a terminal the table is redrawn in place; otherwise (a pipe, a file)
/// each interval is printed after the last, without terminal escapes, under
/// a line with its time. With `--output json`, one object per interval.
/// `SERVICE...` limits it to those services, as `lb stats` does.
pub(super) fn watch_stats(
    socket: &Path,
    services: &[String],
    output: Output,
    count: Option<u64>,
) -> Result<(), Failure> {
    use std::io::Write as _;
    let path = api::with_services("/v1/stats", services);
    let fetch = || -> Result<(StatsReport, std::time::Instant), Failure> {
        let text = api::get_text(socket, &path)?;
        let at = std::time::Instant::now();
        serde_json::from_str(&text)
            .map(|report| (report, at))
            .context("the controller's stats have an unexpected shape")
            .map_err(Failure::Runtime)
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (mut previous, mut previous_at) = fetch()?;
    let mut shown = 0;
    while count.is_none_or(|count| shown < count) {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (current, at) = fetch()?;
        let report = crate::watch::rates(
            &previous,
            &current,
            at.duration_since(previous_at).as_secs_f64(),
        );
        let mut stdout = std::io::stdout().lock();
        let written = match output {
            Output::Json => serde_json::to_string(&report)
                .map_err(std::io::Error::other)
                .and_then(|line| writeln!(stdout, "{line}")),
            Output::Human if terminal => write!(
                stdout,
                // Home and clear: redraw in place, like `top`.
                "\x1b[H\x1b[2Jlb stats --watch ({}), per second; Ctrl-C to stop\n\n{}",
                socket.display(),
                crate::watch::render(&report)
            ),
            Output::Human => writeln!(
                stdout,
                "{}\n{}",
                crate::trace::utc_text(0, unix_now_ns()),
                crate::watch::render(&report)
            ),
        };
        if written.and_then(|()| stdout.flush()).is_err() {
            // The reader went away (a closed pipe): done.
            return Ok(());
        }
        previous = current;
        previous_at = at;
        shown += 1;
    }
    Ok(())
}

/// The controller's JSON on stdout as it came, one line; a reader that
/// went away (a closed pipe) ends it quietly.
fn print_json(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
}

/// Nanoseconds since the Unix epoch.
pub(super) fn unix_now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(0))
}

/// `lb route`: asks the controller, which reads its maps.
pub(super) fn route(
    socket: &Path,
    (client, client_port): (std::net::IpAddr, Option<u16>),
    vip: std::net::SocketAddr,
    protocol: RouteProtocol,
    output: Output,
) -> Result<(), Failure> {
    let request = crate::route::report::RouteRequest {
        client,
        client_port,
        vip: vip.ip(),
        port: vip.port(),
        protocol: match protocol {
            RouteProtocol::Tcp => "tcp",
            RouteProtocol::Udp => "udp",
        }
        .into(),
    };
    let body = serde_json::to_value(&request)
        .context("encoding the request")
        .map_err(Failure::Runtime)?;
    let value = api::post(socket, "/v1/route", &body)?;
    if output == Output::Json {
        println!("{value}");
        return Ok(());
    }
    let report: crate::route::report::RouteReport = serde_json::from_value(value)
        .context("the controller's route answer has an unexpected shape")
        .map_err(Failure::Runtime)?;
    crate::route::report::print(&report);
    Ok(())
}

/// `lb trace`: polls the controller, prints each event as it comes, and
/// how many were lost whenever that grows.
pub(super) fn trace(
    socket: &Path,
    filter: &crate::trace::Filter,
    limit: Option<u64>,
    output: Output,
) -> Result<(), Failure> {
    use std::io::Write as _;
    let client = format!(
        "{}-{}",
        std::process::id(),
        crate::dataplane::monotonic_ns()
    );
    let mut after = None;
    let (mut shown, mut lost) = (0u64, 0u64);
    if output == Output::Human {
        eprintln!("tracing (Ctrl-C to stop)");
    }
    let mut stdout = std::io::stdout().lock();
    loop {
        let poll = crate::trace::TracePoll {
            client: client.clone(),
            after,
            filter: filter.clone(),
        };
        let body = serde_json::to_value(&poll)
            .context("encoding the request")
            .map_err(Failure::Runtime)?;
        let value = api::post(socket, "/v1/trace", &body)?;
        let batch: crate::trace::TraceBatch = serde_json::from_value(value)
            .context("the controller's trace has an unexpected shape")
            .map_err(Failure::Runtime)?;
        after = Some(batch.next);
        if batch.lost > lost {
            lost = batch.lost;
            let _ = match output {
                Output::Json => writeln!(stdout, "{}", serde_json::json!({ "lost": lost })),
                Output::Human => {
                    writeln!(stdout, "# {lost} events lost (rate limit or full buffer)")
                }
            };
        }
        for line in &batch.events {
            if limit.is_some_and(|limit| shown >= limit) {
                break;
            }
            let written = match output {
                Output::Json => serde_json::to_string(line)
                    .map_err(std::io::Error::other)
                    .and_then(|text| writeln!(stdout, "{text}")),
                Output::Human => writeln!(stdout, "{}", crate::trace::human(line)),
            };
            if written.is_err() {
                // The reader went away (a closed pipe): done.
                return Ok(());
            }
            shown += 1;
        }
        let _ = stdout.flush();
        if limit.is_some_and(|limit| shown >= limit) {
            return Ok(());
        }
    }
}

pub(super) fn change_backend(
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
pub(super) fn guard(socket: &Path, action: &GuardAction, output: Output) -> Result<(), Failure> {
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
/// `lb ha`: the `ha` part of the status.
pub(super) fn ha(socket: &Path, output: Output) -> Result<(), Failure> {
    let value = api::get(socket, "/v1/status")?;
    if output == Output::Json {
        println!("{}", value["ha"]);
        return Ok(());
    }
    let report: StatusReport = serde_json::from_value(value)
        .context("the controller's status has an unexpected shape")
        .map_err(Failure::Runtime)?;
    if report.ha.instances.is_empty() {
        println!("ha: {} ({})", report.ha.state, report.ha.reason);
    }
    print_ha(&report.ha, "");
    Ok(())
}

/// One block per VRRP instance: state and why, priority in effect and
/// why, the master, the peer, the last change (time and age), tracks.
pub(super) fn print_ha(report: &crate::ha::HaStatus, indent: &str) {
    let now = std::time::SystemTime::now();
    for instance in &report.instances {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(instance.since);
        let ago = now.duration_since(at).map_or_else(
            |_| "just now".to_string(),
            |d| {
                format!(
                    "{} ago",
                    humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
                )
            },
        );
        println!(
            "{indent}vrrp {} on {}: {} since {} ({ago}), {}; {} change(s)",
            instance.virtual_router_id,
            instance.interface,
            instance.state,
            humantime::format_rfc3339_seconds(at),
            instance.reason,
            instance.transitions,
        );
        println!(
            "{indent}  priority {} ({}), master {}, peer {}",
            instance.effective_priority,
            instance.priority_reason,
            instance.master.as_deref().unwrap_or("-"),
            instance.peer.as_deref().unwrap_or("-"),
        );
        if !instance.floating_ips.is_empty() {
            let added = instance.floating_ips_added_ms.map_or(String::new(), |ms| {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
                format!(", in place since {}", humantime::format_rfc3339_millis(at))
            });
            let refused = match instance.address_failures {
                0 => String::new(),
                n => format!("; {n} add(s) refused"),
            };
            println!(
                "{indent}  floating {}{added}{refused}",
                instance.floating_ips.join(", ")
            );
        }
        for track in &instance.tracks {
            let effect = if track.weight == 0 {
                "fault".to_string()
            } else {
                format!("-{}", track.weight)
            };
            println!(
                "{indent}  track {}: {} healthy (needs {}), {}{}",
                track.service,
                track.healthy,
                track.min_healthy,
                if track.failing {
                    "failing: "
                } else {
                    "ok; when failing "
                },
                effect
            );
        }
    }
}

pub(super) fn print_guard(report: &crate::guard::GuardReport) {
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
