//! Two balancers, floating IPs, VRRP between them: the master holds the
//! clients' and the backends' gateway addresses and forwards; when it hands
//! over (SIGTERM, or SIGQUIT, which leaves its data plane attached) or drops
//! off the network, the backup takes the addresses
//! (gratuitous ARP) and the traffic, and established flows carry on in every
//! forwarding mode (both build the same Maglev tables; the NAT reply path is
//! stateless). Handovers run over multicast, cut-offs over unicast peers.
//! Malformed VRRP is counted and ignored, and a real keepalived is a peer in
//! both roles. Takeover times are printed, not asserted.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use lb_tests::{
    bed::{HeldConnection, tcp_request},
    hapair::{HaBed, Layout, Member, wait_requests},
    keepalived::Keepalived,
    netns::{Netns, wait_until},
};

/// The VIPs, one service per forwarding mode.
const NAT: &str = "203.0.113.10:80";
const DSR: &str = "203.0.113.11:80";
const TUNNEL: &str = "203.0.113.12:80";
const DSR6: &str = "[2001:db8:ff::11]:80";
/// What the master holds: the clients' gateway and the backends' gateway
/// (NAT replies must come back through the master), in both families.
const FLOATING: &str = "198.51.100.1/24, 192.0.2.254/24, '2001:db8:1::1/64', '2001:db8::fe/64'";

/// The bed ([`HaBed`]): four services, one per forwarding mode and DSR
/// over IPv6, both families; the client reaches the VIPs through the
/// floating 198.51.100.1 / `2001:db8:1::1`. `tag` keeps parallel tests'
/// instances, pins and sockets apart; `unicast` has the balancers advertise
/// to each other's address instead of 224.0.0.18.
fn ha_bed(tag: &str, unicast: bool) -> HaBed {
    let layout = Layout {
        ns: "h".into(),
        name: "ha".into(),
        tag: tag.into(),
        routes: vec![
            ("203.0.113.0/24", "198.51.100.1"),
            ("2001:db8:ff::/64", "2001:db8:1::1"),
        ],
        ipv6: true,
    };
    HaBed::new(&layout, |member| {
        let Member {
            index: i,
            peer,
            instance,
            socket,
        } = *member;
        let priority = if i == 1 { 150 } else { 100 };
        let peers = if unicast {
            format!("unicast_peers: [{peer}], ")
        } else {
            String::new()
        };
        format!(
            "instance: {instance}\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
             \x20 - {{ name: nat, vip: 203.0.113.10, port: 80, protocol: tcp, forwarding: nat, \
             backends: [{{ address: 192.0.2.11, port: 8080 }}, {{ address: 192.0.2.12, port: 8080 }}] }}\n\
             \x20 - {{ name: dsr, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, \
             backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}] }}\n\
             \x20 - {{ name: tunnel, vip: 203.0.113.12, port: 80, protocol: tcp, forwarding: tunnel, \
             backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}] }}\n\
             \x20 - {{ name: dsr6, vip: '2001:db8:ff::11', port: 80, protocol: tcp, forwarding: dsr, \
             backends: [{{ address: '2001:db8::11' }}, {{ address: '2001:db8::12' }}] }}\n\
             ha: {{ interface: eth0, virtual_router_id: 51, priority: {priority}, \
             advert_interval: 100ms, preempt: true, {peers}floating_ips: [{FLOATING}] }}\n\
             dataplane: {{ tunnel_source_v4: 192.0.2.240/28 }}\n\
             control: {{ socket: {socket} }}\n"
        )
    })
}

/// Sends `payload` as IP protocol 112 (VRRP) with TTL 255 from `ns` to `to`.
fn send_vrrp(ns: &Netns, to: &'static str, payload: &'static [u8]) {
    ns.run(move || {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, 112);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let ttl: libc::c_int = 255;
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_TTL,
                std::ptr::from_ref(&ttl).cast(),
                libc::socklen_t::try_from(std::mem::size_of_val(&ttl)).unwrap(),
            );
            let address: std::net::Ipv4Addr = to.parse().unwrap();
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from(address).to_be(),
                },
                sin_zero: [0; 8],
            };
            let sent = libc::sendto(
                fd,
                payload.as_ptr().cast(),
                payload.len(),
                0,
                std::ptr::from_ref(&sin).cast(),
                libc::socklen_t::try_from(std::mem::size_of_val(&sin)).unwrap(),
            );
            libc::close(fd);
            assert_eq!(
                usize::try_from(sent).ok(),
                Some(payload.len()),
                "garbage VRRP not sent"
            );
        }
    });
}

#[test]
fn garbage_vrrp_and_an_ha_reload_change_nothing() {
    let mut bed = ha_bed("g", false);
    bed.start_pair();
    let before = bed.ha(0)["transitions"].as_u64().unwrap();
    // Truncated, wrong version, and a priority-0 "advertisement" with a
    // broken checksum that would otherwise make the master give up.
    send_vrrp(&bed.client, "198.51.100.1", b"garbage");
    send_vrrp(
        &bed.client,
        "198.51.100.1",
        &[0x21, 51, 200, 1, 0, 10, 0, 0, 192, 0, 2, 254],
    );
    send_vrrp(
        &bed.client,
        "198.51.100.1",
        &[0x31, 51, 0, 1, 0, 10, 0xde, 0xad, 192, 0, 2, 254],
    );
    assert!(
        wait_until(Duration::from_secs(5), || bed.ha(0)["invalid_packets"]
            .as_u64()
            .unwrap_or(0)
            >= 3),
        "invalid VRRP packets not counted: {}",
        bed.ha(0)
    );
    // A reload that changes the ha section is refused and changes nothing.
    let balancer = &bed.balancers[0];
    let config = std::fs::read_to_string(balancer.config.path()).unwrap();
    std::fs::write(
        balancer.config.path(),
        config.replace("priority: 150", "priority: 90"),
    )
    .unwrap();
    let reload = balancer.lb(&["reload", "--socket", &balancer.socket]);
    std::fs::write(balancer.config.path(), config).unwrap();
    assert!(!reload.status.success(), "{reload:?}");
    let said = String::from_utf8_lossy(&reload.stderr);
    assert!(said.contains("the ha section changed"), "{said}");
    std::thread::sleep(Duration::from_millis(500));
    let ha = bed.ha(0);
    assert_eq!(ha["state"], "master", "{ha}");
    assert_eq!(ha["priority"], 150, "{ha}");
    assert_eq!(ha["transitions"].as_u64().unwrap(), before, "{ha}");
    assert_eq!(bed.ha_state(1), "backup");
    let target: SocketAddr = DSR.parse().unwrap();
    let answer = bed.client.run(move || tcp_request(target, None));
    assert!(answer.is_some(), "the VIP stopped answering");
    println!("garbage VRRP: {}", bed.ha(0));
}

/// Opens connections to the VIP until `stop`, counting them in `made`;
/// (start time, answer).
fn steady_client(
    bed: &HaBed,
    vip: &str,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<(Instant, Option<String>)>> {
    let target: SocketAddr = vip.parse().unwrap();
    bed.client.spawn_thread(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) && samples.len() < 50_000 {
            samples.push((Instant::now(), tcp_request(target, None)));
            made.fetch_add(1, Ordering::Relaxed);
        }
        samples
    })
}

/// Fails the master with `fail` while a client connects to `vip` and holds
/// ten connections open across the takeover.
fn takeover(tag: &str, unicast: bool, vip: &str, how: &str, fail: impl FnOnce(&mut HaBed)) {
    let mut bed = ha_bed(tag, unicast);
    bed.start_pair();
    let target: SocketAddr = vip.parse().unwrap();
    let held: Vec<HeldConnection> = bed.client.run(move || {
        (0..10)
            .filter_map(|_| HeldConnection::open(target))
            .collect()
    });
    assert_eq!(held.len(), 10, "connections through the master");
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let client = steady_client(&bed, vip, Arc::clone(&stop), Arc::clone(&made));
    wait_requests(&made, 20);

    let failed_at = Instant::now();
    fail(&mut bed);
    assert!(
        wait_until(Duration::from_secs(10), || bed.ha_state(1) == "master"),
        "the backup never took over"
    );
    let seen_master = Instant::now();
    let took_over = seen_master - failed_at;
    wait_requests(&made, 100);
    stop.store(true, Ordering::Relaxed);
    let samples = client.join().unwrap();
    let failures: Vec<Duration> = samples
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(at, _)| at.saturating_duration_since(failed_at))
        .collect();
    let last = failures.iter().max().copied().unwrap_or_default();
    println!(
        "{how}: backup master {took_over:?} after the failure; {} of {} connections failed, \
         the last {last:?} after it",
        failures.len(),
        samples.len()
    );
    // Once the backup has taken over and served its first connection (its
    // neighbour announcements reached the client), nothing fails.
    let settled = samples
        .iter()
        .find(|(at, r)| *at > seen_master && r.is_some())
        .map(|(at, _)| *at)
        .expect("no connection served after the takeover");
    println!(
        "{how}: first connection through the new master {:?} after it reported master",
        settled - seen_master
    );
    let after: Vec<_> = samples.iter().filter(|(at, _)| *at > settled).collect();
    assert!(
        after.len() >= 50,
        "{} connections after the takeover",
        after.len()
    );
    assert!(
        after.iter().all(|(_, r)| r.is_some()),
        "connections failed after the takeover: {} of {}",
        after.iter().filter(|(_, r)| r.is_none()).count(),
        after.len()
    );
    // Established DSR flows continue through the new master.
    let finished = bed
        .client
        .run(move || held.into_iter().filter_map(HeldConnection::finish).count());
    println!("{how}: {finished} of 10 connections held across the takeover completed");
    assert_eq!(finished, 10, "established flows broke in the takeover");
}

fn sigterm(bed: &mut HaBed) {
    assert!(bed.balancers[0].stop(libc::SIGTERM).status.success());
}

fn cut_off(bed: &mut HaBed) {
    bed.balancers[0].ns.ip(&["link", "set", "eth0", "down"]);
}

#[test]
fn nat_flows_survive_a_sigterm_handover() {
    takeover(
        "tn",
        false,
        NAT,
        "nat, SIGTERM handover, multicast",
        sigterm,
    );
}

#[test]
fn nat_flows_survive_the_master_dropping_off() {
    takeover("cn", true, NAT, "nat, master cut off, unicast", cut_off);
}

#[test]
fn dsr_flows_survive_the_master_dropping_off() {
    takeover("cd", true, DSR, "dsr, master cut off, unicast", cut_off);
}

/// The client's neighbour entry for its IPv6 gateway follows the takeover
/// only through the new master's unsolicited neighbour advertisement.
#[test]
fn ipv6_flows_survive_a_sigterm_handover() {
    takeover(
        "t6",
        false,
        DSR6,
        "dsr ipv6, SIGTERM handover, multicast",
        sigterm,
    );
}

#[test]
fn tunnel_flows_survive_a_sigterm_handover() {
    takeover(
        "tt",
        false,
        TUNNEL,
        "tunnel, SIGTERM handover, multicast",
        sigterm,
    );
}

/// keepalived (the reference peer) in `ns` for the IPv4 instance of the
/// bed: VRID 51, advert interval 100 ms, the bed's floating IPs.
fn keepalived(ns: &Netns, tag: &str, priority: u8) -> Keepalived {
    Keepalived::start(
        ns,
        tag,
        &format!(
            "global_defs {{\n  vrrp_version 3\n}}\n\
                 vrrp_instance lb {{\n  state BACKUP\n  interface eth0\n  virtual_router_id 51\n  \
                 priority {priority}\n  advert_int 0.1\n  \
                 virtual_ipaddress {{\n    198.51.100.1/24\n    192.0.2.254/24\n  }}\n  \
                 virtual_ipaddress_excluded {{\n    2001:db8:1::1/64\n    2001:db8::fe/64\n  }}\n}}\n"
        ),
    )
}

fn holds_floating_ip(ns: &Netns) -> bool {
    String::from_utf8_lossy(&ns.ip(&["-4", "addr", "show", "eth0"]).stdout).contains("192.0.2.254/")
}

/// Whether a balancer that reports master holds the floating IP within a
/// second (status says master only once the addresses are in place; the
/// wait covers a read of the address list racing a move).
fn comes_to_hold_floating_ip(ns: &Netns) -> bool {
    wait_until(Duration::from_secs(1), || holds_floating_ip(ns))
}

/// lb (priority 100) against keepalived at 200: lb hears keepalived's
/// advertisements and stays backup; when keepalived stops, lb takes over
/// and serves the VIP.
#[test]
fn keepalived_master_lb_backup() {
    let mut bed = ha_bed("k", false);
    let mut keepalived = keepalived(&bed.balancers[0].ns, "k", 200);
    assert!(
        wait_until(Duration::from_secs(10), || holds_floating_ip(
            &bed.balancers[0].ns
        )),
        "keepalived never became master: {}",
        keepalived.log()
    );
    bed.start(1);
    assert!(
        wait_until(Duration::from_secs(10), || bed.ha(1)["peer"] == "192.0.2.1"),
        "lb never heard keepalived: {}",
        bed.ha(1)
    );
    let ha = bed.ha(1);
    assert_eq!(ha["state"], "backup", "lb ignored keepalived: {ha}");
    assert!(!holds_floating_ip(&bed.balancers[1].ns));

    let stopped_at = Instant::now();
    assert!(keepalived.stop(), "keepalived did not exit on SIGTERM");
    let exited = stopped_at.elapsed();
    assert!(
        wait_until(Duration::from_secs(5), || bed.ha_state(1) == "master"),
        "lb did not take over from keepalived"
    );
    let took_over = stopped_at.elapsed();
    assert!(comes_to_hold_floating_ip(&bed.balancers[1].ns));
    let target: SocketAddr = DSR.parse().unwrap();
    let served = bed.client.run(move || {
        (0..20)
            .filter(|_| tcp_request(target, None).is_some())
            .count()
    });
    println!(
        "keepalived → lb: keepalived exited {exited:?} after SIGTERM, lb master \
         {took_over:?} after it ({}); {served}/20 served",
        bed.ha(1)["reason"]
    );
    assert_eq!(served, 20, "the VIP through lb after the takeover");
}

/// lb (priority 100) master, keepalived joins at 50: keepalived hears lb's
/// advertisements and stays backup (never adds the address); when lb
/// hands over on SIGTERM, keepalived takes the address.
#[test]
fn lb_master_keepalived_backup() {
    let mut bed = ha_bed("l", false);
    bed.start(1);
    assert!(
        wait_until(Duration::from_secs(10), || bed.ha_state(1) == "master"),
        "lb never became master"
    );
    let mut keepalived = keepalived(&bed.balancers[0].ns, "l", 50);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !holds_floating_ip(&bed.balancers[0].ns),
        "keepalived ignored lb's advertisements: {}",
        keepalived.log()
    );
    assert_eq!(bed.ha(1)["transitions"].as_u64(), Some(2), "lb flapped");

    let stopped_at = Instant::now();
    assert!(bed.balancers[1].stop(libc::SIGTERM).status.success());
    assert!(
        wait_until(Duration::from_secs(5), || holds_floating_ip(
            &bed.balancers[0].ns
        )),
        "keepalived did not take over: {}",
        keepalived.log()
    );
    println!(
        "lb → keepalived: keepalived holds the address {:?} after lb's SIGTERM",
        stopped_at.elapsed()
    );
    assert!(keepalived.stop(), "keepalived did not exit on SIGTERM");
}

/// SIGQUIT on the master (the lossless-upgrade exit) hands the floating IPs
/// over first — a priority-0 advertisement, the addresses removed — so two
/// hosts never answer ARP for one address; the data plane stays attached
/// and pinned for the next `lb run`.
#[test]
fn sigquit_on_the_master_hands_over_and_leaves_the_data_plane() {
    let mut bed = ha_bed("q", false);
    bed.start_pair();
    assert!(comes_to_hold_floating_ip(&bed.balancers[0].ns));
    let quit_at = Instant::now();
    let output = bed.balancers[0].stop(libc::SIGQUIT);
    assert!(output.status.success(), "SIGQUIT exit: {output:?}");
    // Removed before the process exited: no waiting for it.
    let old = &bed.balancers[0];
    let addresses =
        String::from_utf8_lossy(&old.ns.ip(&["addr", "show", "eth0"]).stdout).into_owned();
    for floating in [
        "198.51.100.1/",
        "192.0.2.254/",
        "2001:db8:1::1/",
        "2001:db8::fe/",
    ] {
        assert!(
            !addresses.contains(floating),
            "{floating} left on the old master:\n{addresses}"
        );
    }
    assert!(old.ns.has_xdp("eth0"), "SIGQUIT detached the data plane");
    let pins = std::path::Path::new("/sys/fs/bpf/lb").join(&old.instance);
    assert!(
        pins.is_dir(),
        "SIGQUIT removed the pins at {}",
        pins.display()
    );
    assert!(
        wait_until(Duration::from_secs(10), || bed.ha_state(1) == "master"),
        "the backup never took over: {}",
        bed.ha(1)
    );
    println!(
        "SIGQUIT: backup master {:?} after the signal ({})",
        quit_at.elapsed(),
        bed.ha(1)["reason"]
    );
    // Taken over on the priority-0 advertisement, not by timing out.
    let reason = bed.ha(1)["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.starts_with("priority 0"), "{reason}");
    assert!(comes_to_hold_floating_ip(&bed.balancers[1].ns));
    let target: SocketAddr = DSR.parse().unwrap();
    let served = bed.client.run(move || {
        (0..20)
            .filter(|_| tcp_request(target, None).is_some())
            .count()
    });
    assert_eq!(served, 20, "the VIP through the new master");
}
