//! Prometheus metrics on `control.metrics` (`GET /metrics`), encoded with
//! `prometheus-client` from a snapshot of the status and counters taken at
//! scrape time: the data plane's counters live in BPF maps, so there is
//! nothing to keep in step between scrapes.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    http::{Request, Response},
    owner::Handle,
    plan::BackendKey,
    report::{StatsReport, StatusReport},
};

/// What a scrape reads of the running balancer, as a job for its owner.
/// The controller implements it; metrics never names the controller
/// (docs/STYLE.md §14).
pub trait Source: 'static {
    /// The status report.
    fn status(&self) -> StatusReport;
    /// The counters.
    ///
    /// # Errors
    /// A counter that could not be read.
    fn stats(&self) -> anyhow::Result<StatsReport>;
    /// Health-check durations, by backend.
    fn check_latency(&self) -> &BTreeMap<BackendKey, Histogram>;
    /// Map fill levels: (map, entries, capacity).
    fn map_fill(&self) -> Vec<(&'static str, u64, u64)>;
}

/// One scrape's worth of numbers.
#[derive(Debug)]
struct Scrape {
    status: StatusReport,
    stats: StatsReport,
    latency: Vec<(Labels, Histogram)>,
    maps: Vec<(&'static str, u64, u64)>,
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Writes one counter family.
fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family.
fn gauges(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_traffic(&mut encoder)?;
        self.encode_state(&mut encoder)
    }
}

impl Scrape {
    /// Counters: traffic per service and backend, verdicts and drops.
    fn encode_traffic(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut service_packets = Vec::new();
        let mut service_bytes = Vec::new();
        let mut service_flows = Vec::new();
        let mut backend_packets = Vec::new();
        let mut backend_bytes = Vec::new();
        let mut backend_flows = Vec::new();
        for service in &self.stats.services {
            let l = labels(&[("service", &service.name)]);
            service_packets.push((l.clone(), service.packets));
            service_bytes.push((l.clone(), service.bytes));
            service_flows.push((l, service.new_flows));
            for backend in &service.backends {
                let name = format!("{}:{}", backend.address, backend.port);
                let l = labels(&[("service", &service.name), ("backend", &name)]);
                backend_packets.push((l.clone(), backend.packets));
                backend_bytes.push((l.clone(), backend.bytes));
                backend_flows.push((l, backend.new_flows));
            }
        }
        counters(
            e,
            "lb_service_packets",
            "Packets forwarded to the service's backends.",
            &service_packets,
        )?;
        counters(
            e,
            "lb_service_bytes",
            "Bytes forwarded to the service's backends.",
            &service_bytes,
        )?;
        counters(
            e,
            "lb_service_new_flows",
            "Flows scheduled (new or rescheduled).",
            &service_flows,
        )?;
        counters(
            e,
            "lb_backend_packets",
            "Packets forwarded to the backend.",
            &backend_packets,
        )?;
        counters(
            e,
            "lb_backend_bytes",
            "Bytes forwarded to the backend.",
            &backend_bytes,
        )?;
        counters(
            e,
            "lb_backend_new_flows",
            "Flows scheduled to the backend.",
            &backend_flows,
        )?;
        let drops: Vec<(Labels, u64)> = self
            .stats
            .drops
            .iter()
            .map(|(reason, n)| (labels(&[("reason", reason)]), *n))
            .collect();
        counters(
            e,
            "lb_dropped_packets",
            "Packets dropped, by reason.",
            &drops,
        )?;
        let verdicts: Vec<(Labels, u64)> = self
            .stats
            .reasons
            .iter()
            .map(|(reason, n)| (labels(&[("reason", reason)]), *n))
            .collect();
        counters(e, "lb_verdicts", "Packets by verdict reason.", &verdicts)?;
        let table = &self.stats.connection_table;
        counters(
            e,
            "lb_connection_table_evictions_estimated",
            "Connection-table LRU evictions since the controller started, an estimate from \
             its walks every 10 s: bound=lower counts entries seen gone, bound=upper flows \
             scheduled minus the table's growth.",
            &[
                (labels(&[("bound", "lower")]), table.evictions_at_least),
                (labels(&[("bound", "upper")]), table.evictions_at_most),
            ],
        )?;
        counters(
            e,
            "lb_connection_table_established_evictions_estimated",
            "Connection-table LRU evictions of established flows (open and past their first \
             packet; half-open ones are told apart only with guard.attack), at least: entries \
             seen gone between walks.",
            &[(labels(&[]), table.established_evictions_at_least)],
        )?;
        self.encode_ha_counters(e)?;
        self.encode_guard(e)?;
        self.encode_sync(e)?;
        self.encode_announce(e)
    }

    /// Connection sync: entries by direction, refusals by reason, events
    /// the data path lost (nothing without a `sync:` section).
    fn encode_sync(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sync) = &self.status.sync else {
            return Ok(());
        };
        let (sent, received, installed) = sync.totals();
        counters(
            e,
            "lb_sync_entries",
            "Connection-sync entries: sent to the peers, received from them (authentic and \
             fresh), and of those installed in the connection table.",
            &[
                (labels(&[("direction", "sent")]), sent),
                (labels(&[("direction", "received")]), received),
                (labels(&[("direction", "installed")]), installed),
            ],
        )?;
        let refused: Vec<(Labels, u64)> = sync
            .refused
            .iter()
            .map(|(reason, n)| (labels(&[("reason", reason)]), *n))
            .collect();
        counters(
            e,
            "lb_sync_refused",
            "What connection sync refused, by reason: datagrams (bad_tag, replay, \
             unknown_peer, malformed) or entries (unknown_service, unknown_backend, rate, \
             share, table_full).",
            &refused,
        )?;
        counters(
            e,
            "lb_sync_events_lost",
            "New flows the data path could not report to the sync thread (its ring was full).",
            &[(Vec::new(), sync.events_lost)],
        )
    }

    /// The first VRRP instance's counters: state changes, packets dropped
    /// and packets ignored.
    fn encode_ha_counters(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ha = &self.status.ha;
        counters(
            e,
            "lb_ha_transitions",
            "HA state changes since the controller started.",
            &[(Vec::new(), ha.transitions)],
        )?;
        counters(
            e,
            "lb_ha_invalid_packets",
            "Malformed VRRP packets dropped (bad TTL, checksum, version...).",
            &[(Vec::new(), ha.invalid_packets)],
        )?;
        counters(
            e,
            "lb_ha_ignored_packets",
            "Well-formed VRRP advertisements ignored: another virtual router's (VRID) or \
             another address family's.",
            &[(Vec::new(), ha.ignored_packets)],
        )
    }

    /// Gauges: backend health and weights, serving backends, HA state.
    fn encode_state(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut up = Vec::new();
        let mut active = Vec::new();
        let mut weight = Vec::new();
        let mut latency = Vec::new();
        let mut usable = Vec::new();
        let mut drained = Vec::new();
        let mut tier = Vec::new();
        let mut active_tier = Vec::new();
        for service in &self.status.services {
            if let Some(serving) = service.active_tier {
                active_tier.push((labels(&[("service", &service.name)]), i64::from(serving)));
            }
            let serving = service
                .backends
                .iter()
                .filter(|b| b.effective_weight > 0)
                .count();
            usable.push((
                labels(&[("service", &service.name)]),
                i64::try_from(serving).unwrap_or(i64::MAX),
            ));
            for backend in &service.backends {
                let name = format!("{}:{}", backend.address, backend.port);
                let l = labels(&[("service", &service.name), ("backend", &name)]);
                up.push((l.clone(), i64::from(backend.health != "down")));
                drained.push((l.clone(), i64::from(backend.drained)));
                tier.push((l.clone(), i64::from(backend.tier)));
                if let Some(flows) = backend.active_flows {
                    active.push((l.clone(), i64::try_from(flows).unwrap_or(i64::MAX)));
                }
                weight.push((l.clone(), i64::from(backend.effective_weight)));
                if let Some(check) = &backend.last_check {
                    #[allow(clippy::cast_possible_truncation, reason = "microseconds of a check")]
                    latency.push((l, (check.latency_ms * 1000.0) as i64));
                }
            }
        }
        gauges(
            e,
            "lb_backend_up",
            "1 if the backend is up (or unchecked), 0 if down.",
            &up,
        )?;
        gauges(
            e,
            "lb_backend_active_flows",
            "Active flows (an estimate for dsr and tunnel: one direction seen).",
            &active,
        )?;
        gauges(
            e,
            "lb_backend_effective_weight",
            "Weight in the live table (hundredths of the configured unit for least-conn and resource).",
            &weight,
        )?;
        gauges(
            e,
            "lb_backend_check_latency_microseconds",
            "Duration of the last health check.",
            &latency,
        )?;
        gauges(
            e,
            "lb_backend_drained",
            "1 if the operator drained the backend (lb drain), 0 if not.",
            &drained,
        )?;
        gauges(
            e,
            "lb_backend_tier",
            "The backend's tier (0 is primary; higher tiers stand by).",
            &tier,
        )?;
        gauges(
            e,
            "lb_service_serving_backends",
            "Backends taking new flows (0: every packet is dropped).",
            &usable,
        )?;
        gauges(
            e,
            "lb_service_active_tier",
            "The tier taking the service's new flows (above 0: a standby tier); \
             absent while no backend can.",
            &active_tier,
        )?;
        let ha = vec![(labels(&[("state", &self.status.ha.state)]), 1)];
        gauges(
            e,
            "lb_ha_state",
            "The HA state of the first VRRP instance (the labelled one is 1).",
            &ha,
        )?;
        self.encode_instances(e)?;
        self.encode_internals(e)
    }

    /// Per VRRP instance, labelled by VRID: state, priorities, changes,
    /// refused floating-IP adds, the fault's cause.
    fn encode_instances(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut state = Vec::new();
        let mut priority = Vec::new();
        let mut transitions = Vec::new();
        let mut failures = Vec::new();
        let mut faults = Vec::new();
        for instance in &self.status.ha.instances {
            let vrid = instance.virtual_router_id.to_string();
            state.push((labels(&[("vrid", &vrid), ("state", &instance.state)]), 1));
            failures.push((labels(&[("vrid", &vrid)]), instance.address_failures));
            if let Some(cause) = &instance.fault_cause {
                faults.push((labels(&[("vrid", &vrid), ("cause", cause)]), 1));
            }
            for (kind, value) in [
                ("configured", instance.priority),
                ("effective", instance.effective_priority),
            ] {
                priority.push((labels(&[("vrid", &vrid), ("kind", kind)]), i64::from(value)));
            }
            transitions.push((labels(&[("vrid", &vrid)]), instance.transitions));
        }
        gauges(
            e,
            "lb_ha_instance_state",
            "The state of each VRRP instance (the labelled one is 1): master, backup, \
             fault, initialize.",
            &state,
        )?;
        gauges(
            e,
            "lb_ha_instance_priority",
            "Each VRRP instance's priority: configured, and in effect (tracking lowers it).",
            &priority,
        )?;
        counters(
            e,
            "lb_ha_instance_transitions",
            "State changes of each VRRP instance since the controller started.",
            &transitions,
        )?;
        counters(
            e,
            "lb_ha_instance_address_failures",
            "Floating-IP adds the kernel refused, each address of each try: retried, then \
             fault (the peer takes over).",
            &failures,
        )?;
        gauges(
            e,
            "lb_ha_instance_fault",
            "Why a VRRP instance in fault is there (1, only while in fault): link_down, \
             no_address, track, floating_ip_refused, thread_stopped.",
            &faults,
        )
    }

    /// `announce`: per VIP, announced (1) or not, with the cause; diverted;
    /// changes; and whether BIRD took the last include.
    fn encode_announce(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(announce) = &self.status.announce else {
            return Ok(());
        };
        let mut announced = Vec::new();
        let mut diverted = Vec::new();
        let mut changes = Vec::new();
        let mut diverts = Vec::new();
        for vip in &announce.vips {
            let a = &vip.announcement;
            let address = a.vip.to_string();
            announced.push((
                labels(&[("vip", &address), ("cause", a.cause.name())]),
                i64::from(a.state == crate::announce::State::Announced),
            ));
            diverted.push((labels(&[("vip", &address)]), i64::from(a.diverted)));
            changes.push((labels(&[("vip", &address)]), vip.changes));
            diverts.push((labels(&[("vip", &address)]), vip.diverts));
        }
        gauges(
            e,
            "lb_vip_announced",
            "1 if BIRD announces the VIP, 0 if withdrawn; cause says why.",
            &announced,
        )?;
        gauges(
            e,
            "lb_vip_diverted",
            "1 while the VIP is announced with the divert community (under attack).",
            &diverted,
        )?;
        counters(
            e,
            "lb_vip_announce_changes",
            "Times the VIP was announced or withdrawn since start.",
            &changes,
        )?;
        counters(
            e,
            "lb_vip_diverts",
            "Times the VIP was diverted since start.",
            &diverts,
        )?;
        gauges(
            e,
            "lb_announce_bird_error",
            "1 if the last attempt to tell BIRD failed (retried every second).",
            &[(Vec::new(), i64::from(announce.bird_error.is_some()))],
        )
    }

    /// The automatic guard's denials.
    fn encode_guard(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let denials: Vec<(Labels, u64)> = self
            .status
            .guard
            .denials_total
            .iter()
            .map(|(cause, n)| (labels(&[("cause", cause)]), *n))
            .collect();
        counters(
            e,
            "lb_guard_denials",
            "Sources the automatic guard denied, by the threshold crossed.",
            &denials,
        )?;
        gauges(
            e,
            "lb_guard_denied_sources",
            "Sources the automatic guard denies now.",
            &[(
                Vec::new(),
                i64::try_from(self.status.guard.denied.len()).unwrap_or(i64::MAX),
            )],
        )?;
        self.encode_attack(e)
    }

    /// `guard.attack`: per VIP, under attack or not, and its rates
    /// (nothing without the section).
    fn encode_attack(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = &self.status.attack;
        if !report.configured {
            return Ok(());
        }
        let mut under = Vec::new();
        let mut new_flows = Vec::new();
        let mut half_open = Vec::new();
        for vip in &report.vips {
            let l = labels(&[("vip", &vip.vip.to_string())]);
            under.push((l.clone(), i64::from(vip.under_attack)));
            #[allow(clippy::cast_possible_truncation, reason = "a rate, rounded")]
            new_flows.push((l.clone(), vip.rates.new_flows_per_second.round() as i64));
            #[allow(clippy::cast_possible_truncation, reason = "a share in per mille")]
            half_open.push((l, (vip.rates.half_open_share * 1000.0).round() as i64));
        }
        gauges(
            e,
            "lb_guard_attack",
            "1 while the VIP is under attack (guard.attack).",
            &under,
        )?;
        gauges(
            e,
            "lb_guard_attack_new_flows_per_second",
            "New flows per second to the VIP over the last second.",
            &new_flows,
        )?;
        gauges(
            e,
            "lb_guard_attack_half_open_permille",
            "Per mille of the VIP's new TCP flows over the last second left half-open.",
            &half_open,
        )?;
        counters(
            e,
            "lb_guard_attacks",
            "Attacks started since the controller started, all VIPs.",
            &[(Vec::new(), report.attacks_total)],
        )
    }

    /// Map fill levels and health-check durations.
    fn encode_internals(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let entries: Vec<(Labels, i64)> = self
            .maps
            .iter()
            .map(|(map, n, _)| {
                (
                    labels(&[("map", map)]),
                    i64::try_from(*n).unwrap_or(i64::MAX),
                )
            })
            .collect();
        let capacity: Vec<(Labels, i64)> = self
            .maps
            .iter()
            .map(|(map, _, n)| {
                (
                    labels(&[("map", map)]),
                    i64::try_from(*n).unwrap_or(i64::MAX),
                )
            })
            .collect();
        gauges(
            e,
            "lb_map_entries",
            "Entries in a data-plane map.",
            &entries,
        )?;
        gauges(
            e,
            "lb_map_capacity",
            "Entries a data-plane map can hold.",
            &capacity,
        )?;
        let mut family = e.encode_descriptor(
            "lb_health_check_duration_seconds",
            "Duration of health checks.",
            None,
            MetricType::Histogram,
        )?;
        for (labels, histogram) in &self.latency {
            histogram.encode(family.encode_family(labels)?)?;
        }
        Ok(())
    }
}

impl Scrape {
    /// The numbers of the controller's current state; taken by its owner,
    /// encoded after on the client's thread.
    fn take(controller: &impl Source) -> anyhow::Result<Self> {
        let latency = controller
            .check_latency()
            .iter()
            .map(|(key, histogram)| {
                let backend = format!("{}:{}", key.address, key.port);
                (
                    labels(&[("service", &key.service), ("backend", &backend)]),
                    histogram.clone(),
                )
            })
            .collect();
        Ok(Self {
            status: controller.status(),
            stats: controller.stats()?,
            latency,
            maps: controller.map_fill(),
        })
    }

    /// The page in the `OpenMetrics` text format.
    fn render(self) -> anyhow::Result<String> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .map_err(|_| anyhow::anyhow!("encoding metrics"))?;
        Ok(text)
    }
}

/// The metrics page for the controller's current state.
pub fn render(controller: &impl Source) -> anyhow::Result<String> {
    Scrape::take(controller)?.render()
}

/// Serves `GET /metrics` on `address` in the background, through
/// [`crate::http`]: clients concurrently, heads bounded to 8 KiB, no body,
/// each read bounded by 5 s and each connection by 30 s.
pub fn serve<S: Source>(address: SocketAddr, controller: Handle<S>) -> anyhow::Result<()> {
    // A scrape kept waiting by a busy owner gets a 503 before the
    // connection's bound cuts it off.
    let controller = controller.with_timeout(crate::http::OWNER_WAIT);
    crate::http::serve_tcp_at(
        address,
        "the metrics address",
        0,
        Arc::new(move |request: Request| answer(&request, &controller)),
    )
}

/// The answer to a request on the metrics listener (or the status page's
/// listener when the two share an address).
pub(crate) fn answer<S: Source>(request: &Request, controller: &Handle<S>) -> Response {
    if request.method != "GET" || request.path != "/metrics" {
        return Response {
            status: 404,
            content_type: "text/plain",
            body: "metrics are at /metrics\n".to_string(),
            headers: Vec::new(),
        };
    }
    let scrape = match controller.call(|c| Scrape::take(c)) {
        Ok(scrape) => scrape,
        Err(error) => return Response::error(503, &error.to_string()),
    };
    match scrape.and_then(Scrape::render) {
        Ok(text) => Response {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: text,
            headers: Vec::new(),
        },
        Err(error) => Response::error(500, &format!("{error:#}")),
    }
}
