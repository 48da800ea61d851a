//! VRRP on the wire (issue 10, items 3 and 4), one balancer and one peer
//! namespace on a veth:
//!
//! - VRRP over IPv6 for an instance whose floating IPs are all IPv6:
//!   `ff02::12` or IPv6 unicast peers, from the link-local address, hop
//!   limit 255; a real keepalived is the peer in both roles, multicast and
//!   unicast;
//! - spoofed and broken IPv6 advertisements (hop limit 64, a bad checksum,
//!   a global source, another VRID) change nothing and are counted, while
//!   a valid one from the same sender makes the master step down;
//! - a new master announces each floating IP `ha.garp_repeat` times,
//!   `ha.garp_interval` apart, the first only once the address is in
//!   place: counted and timed by a packet socket on the peer's side.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice, icmpv6::Icmpv6PayloadSlice};
use lb::vrrp::{AdvertInterval, Advertisement, MULTICAST_V6, emit};
use lb_tests::{
    TempFile,
    keepalived::Keepalived,
    lbrun::LbRun,
    netns::{Netns, veth, wait_until},
};

/// The floating IPs of the IPv6 instance.
const FLOATING_V6: [&str; 2] = ["2001:db8::fe/64", "2001:db8:1::1/64"];
/// Its VRID.
const VRID: u8 = 53;

/// `lb run` in a namespace `tag`b, its peer namespace `tag`a, eth0 to
/// eth0: a holds `2001:db8::1` and 192.0.2.1, b `2001:db8::2` and 192.0.2.2.
/// `ha` gives the balancer's ha section (flow style, without braces) from
/// the peer's link-local address. Field order is drop order: the balancer
/// ends before the namespaces go.
struct Pair {
    lb: LbRun,
    peer: Netns,
}

impl Pair {
    fn new(tag: &str, ha: impl FnOnce(Ipv6Addr) -> String) -> Self {
        let peer = Netns::new(&format!("{tag}a"));
        let ns = Netns::new(&format!("{tag}b"));
        veth(&peer, "eth0", &ns, "eth0");
        for (i, side) in [(1, &peer), (2, &ns)] {
            side.addr("eth0", &format!("192.0.2.{i}/24"));
            side.addr("eth0", &format!("2001:db8::{i}/64"));
        }
        let ha = ha(link_local(&peer));
        Self {
            lb: balancer(ns, tag, &ha),
            peer,
        }
    }

    fn ha(&self) -> serde_json::Value {
        self.lb.status()["ha"].clone()
    }

    fn wait_state(&self, state: &str) {
        assert!(
            wait_until(Duration::from_secs(10), || self.ha()["state"] == state),
            "lb never became {state}: {}",
            self.ha()
        );
    }
}

/// `lb run` in `ns` (not started), with one DSR service and the ha keys
/// `ha` (flow style, without braces) for VRID 53.
fn balancer(ns: Netns, tag: &str, ha: &str) -> LbRun {
    let pid = std::process::id();
    let socket = format!("/run/lb/haw-{tag}-{pid}.sock");
    let instance = format!("haw{tag}x{pid}");
    let config = TempFile::new(
        &format!("haw-{tag}.yaml"),
        &format!(
            "instance: {instance}\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
             \x20 - {{ name: web, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, \
             backends: [{{ address: 192.0.2.11 }}] }}\n\
             ha: {{ interface: eth0, virtual_router_id: {VRID}, advert_interval: 100ms, {ha} }}\n\
             control: {{ socket: {socket}, metrics: 127.0.0.1:9477 }}\n"
        ),
    );
    LbRun::new(ns, config, socket, instance)
}

/// The `ha` keys of an IPv6 instance, multicast or with a unicast `peer`.
fn ha_v6(priority: u8, peer: Option<Ipv6Addr>) -> String {
    let floating = FLOATING_V6.map(|f| format!("'{f}'")).join(", ");
    let peers = peer.map_or(String::new(), |p| format!("unicast_peers: ['{p}'], "));
    format!("priority: {priority}, preempt: true, {peers}floating_ips: [{floating}]")
}

/// The link-local address of `ns`'s eth0, once duplicate address
/// detection has passed.
fn link_local(ns: &Netns) -> Ipv6Addr {
    let mut found = None;
    let ready = wait_until(Duration::from_secs(10), || {
        let listed = ns.ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]);
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        found = text
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok());
        found.is_some() && !text.contains("tentative")
    });
    assert!(ready, "no usable link-local address in {}", ns.name());
    found.unwrap()
}

/// Whether `ns`'s eth0 holds the first IPv6 floating IP.
fn holds_v6(ns: &Netns) -> bool {
    String::from_utf8_lossy(&ns.ip(&["-6", "addr", "show", "eth0"]).stdout)
        .contains("2001:db8::fe/64")
}

/// keepalived (the reference peer) in `ns` with the IPv6 instance;
/// unicast to `peer` when given.
fn keepalived(ns: &Netns, tag: &str, priority: u8, peer: Option<&str>) -> Keepalived {
    // RFC 5798 §7.1: lb drops advertisements with a hop limit other
    // than 255; keepalived sends unicast ones with 64 unless told.
    let unicast = peer.map_or(String::new(), |p| {
        format!("  unicast_ttl 255\n  unicast_peer {{\n    {p}\n  }}\n")
    });
    Keepalived::start(
        ns,
        &format!("v6-{tag}"),
        &format!(
            "global_defs {{\n  vrrp_version 3\n}}\n\
                 vrrp_instance lb6 {{\n  state BACKUP\n  interface eth0\n  \
                 virtual_router_id {VRID}\n  priority {priority}\n  advert_int 0.1\n{unicast}  \
                 virtual_ipaddress {{\n    {}\n    {}\n  }}\n}}\n",
            FLOATING_V6[0], FLOATING_V6[1]
        ),
    )
}

/// keepalived (priority 200) master, lb (100) backup over IPv6: lb hears
/// keepalived's advertisements from its link-local address and stays
/// backup; when keepalived stops (priority 0), lb takes the addresses.
fn keepalived_master_lb_backup(tag: &str, unicast: bool) {
    // keepalived receives unicast advertisements only at its unicast
    // source, the link-local address (its raw socket is bound to it).
    let mut pair = Pair::new(tag, |peer| ha_v6(100, unicast.then_some(peer)));
    let keepalived_source = link_local(&pair.peer).to_string();
    let mut keepalived = keepalived(&pair.peer, tag, 200, unicast.then_some("2001:db8::2"));
    assert!(
        wait_until(Duration::from_secs(10), || holds_v6(&pair.peer)),
        "keepalived never became master: {}",
        keepalived.log()
    );
    pair.lb.start();
    assert!(
        wait_until(Duration::from_secs(10), || pair.ha()["peer"]
            == keepalived_source.as_str()),
        "lb never heard keepalived ({keepalived_source}): {}\n{}\nlb: {}",
        pair.ha(),
        keepalived.log(),
        pair.lb
            .process
            .as_ref()
            .map(lb_tests::netns::ChildGuard::stderr_so_far)
            .unwrap_or_default()
    );
    let ha = pair.ha();
    assert_eq!(ha["state"], "backup", "lb ignored keepalived: {ha}");
    assert!(!holds_v6(&pair.lb.ns));

    let stopped_at = Instant::now();
    assert!(keepalived.stop(), "keepalived did not exit on SIGTERM");
    pair.wait_state("master");
    assert!(wait_until(Duration::from_secs(5), || holds_v6(&pair.lb.ns)));
    let reason = pair.ha()["reason"].as_str().unwrap_or("").to_string();
    println!(
        "IPv6 {}: keepalived → lb: lb master {:?} after keepalived's SIGTERM ({reason})",
        if unicast { "unicast" } else { "multicast" },
        stopped_at.elapsed()
    );
    assert!(reason.starts_with("priority 0"), "{reason}");
}

/// lb (priority 100) master, keepalived (50) joins over IPv6: keepalived
/// hears lb's advertisements and never adds the addresses; when lb hands
/// over on SIGTERM, keepalived takes them.
fn lb_master_keepalived_backup(tag: &str, unicast: bool) {
    let mut pair = Pair::new(tag, |peer| ha_v6(100, unicast.then_some(peer)));
    pair.lb.start();
    pair.wait_state("master");
    assert!(holds_v6(&pair.lb.ns));
    let keepalived = keepalived(&pair.peer, tag, 50, unicast.then_some("2001:db8::2"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !holds_v6(&pair.peer),
        "keepalived ignored lb's advertisements: {}",
        keepalived.log()
    );
    let ha = pair.ha();
    assert_eq!(ha["transitions"].as_u64(), Some(2), "lb flapped: {ha}");
    assert_eq!(ha["invalid_packets"].as_u64(), Some(0), "{ha}");

    let stopped_at = Instant::now();
    assert!(pair.lb.stop(libc::SIGTERM).status.success());
    assert!(
        wait_until(Duration::from_secs(5), || holds_v6(&pair.peer)),
        "keepalived did not take over: {}",
        keepalived.log()
    );
    println!(
        "IPv6 {}: lb → keepalived: keepalived holds the address {:?} after lb's SIGTERM",
        if unicast { "unicast" } else { "multicast" },
        stopped_at.elapsed()
    );
    assert!(!holds_v6(&pair.lb.ns), "lb kept the address after SIGTERM");
}

#[test]
fn ipv6_keepalived_master_lb_backup_multicast() {
    keepalived_master_lb_backup("km", false);
}

#[test]
fn ipv6_keepalived_master_lb_backup_unicast() {
    keepalived_master_lb_backup("ku", true);
}

#[test]
fn ipv6_lb_master_keepalived_backup_multicast() {
    lb_master_keepalived_backup("lm", false);
}

#[test]
fn ipv6_lb_master_keepalived_backup_unicast() {
    lb_master_keepalived_backup("lu", true);
}

/// Two balancers over IPv6 unicast, each naming the other's global
/// address: the higher priority is master, the other its backup (naming
/// the master's link-local address, the source of its advertisements);
/// on SIGTERM the backup takes the addresses on the priority-0
/// advertisement.
#[test]
fn two_balancers_over_ipv6_unicast_hand_over_on_sigterm() {
    let (a, b) = (Netns::new("uua"), Netns::new("uub"));
    veth(&a, "eth0", &b, "eth0");
    a.addr("eth0", "2001:db8::1/64");
    b.addr("eth0", "2001:db8::2/64");
    let master = link_local(&a).to_string();
    let mut first = balancer(a, "uu1", &ha_v6(150, Some("2001:db8::2".parse().unwrap())));
    let mut second = balancer(b, "uu2", &ha_v6(100, Some("2001:db8::1".parse().unwrap())));
    first.start();
    assert!(
        wait_until(Duration::from_secs(10), || first.ha_state() == "master"),
        "the first balancer never became master"
    );
    second.start();
    let ha = |lb: &LbRun| lb.status()["ha"].clone();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let ha = ha(&second);
            ha["state"] == "backup" && ha["peer"] == master.as_str()
        }),
        "no backup of {master}: {}",
        ha(&second)
    );
    assert!(holds_v6(&first.ns) && !holds_v6(&second.ns));
    let stopped_at = Instant::now();
    assert!(first.stop(libc::SIGTERM).status.success());
    assert!(
        wait_until(Duration::from_secs(5), || second.ha_state() == "master"),
        "the backup did not take over: {}",
        ha(&second)
    );
    assert!(wait_until(Duration::from_secs(5), || holds_v6(&second.ns)));
    assert!(
        !holds_v6(&first.ns),
        "the stopped balancer kept the address"
    );
    let reason = ha(&second)["reason"].as_str().unwrap_or("").to_string();
    println!(
        "IPv6 unicast lb → lb: master {:?} after SIGTERM ({reason})",
        stopped_at.elapsed()
    );
    assert!(reason.starts_with("priority 0"), "{reason}");
}

/// Sends `payload` as IPv6 next header 112 from `ns`'s eth0, from `src`,
/// to `to`, with `hops` as the hop limit.
fn send_vrrp6(ns: &Netns, src: Ipv6Addr, to: Ipv6Addr, hops: i32, payload: Vec<u8>) {
    ns.run(move || {
        // SAFETY: plain socket calls on a descriptor this closure owns
        // (closed when `fd` drops), with structs valid for their sizes.
        unsafe {
            let raw = libc::socket(libc::AF_INET6, libc::SOCK_RAW, 112);
            assert!(raw >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let fd = OwnedFd::from_raw_fd(raw);
            let index = libc::if_nametoindex(c"eth0".as_ptr());
            let int_len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap();
            for option in [libc::IPV6_MULTICAST_HOPS, libc::IPV6_UNICAST_HOPS] {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    option,
                    std::ptr::from_ref(&hops).cast(),
                    int_len,
                );
            }
            let index_int = libc::c_int::try_from(index).unwrap();
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_IF,
                std::ptr::from_ref(&index_int).cast(),
                int_len,
            );
            let address = |addr: Ipv6Addr| {
                let mut sin: libc::sockaddr_in6 = std::mem::zeroed();
                sin.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).unwrap();
                sin.sin6_addr.s6_addr = addr.octets();
                sin.sin6_scope_id = index;
                sin
            };
            let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in6>()).unwrap();
            let from = address(src);
            let rc = libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&from).cast(), len);
            assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
            let dst = address(to);
            let sent = libc::sendto(
                fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                std::ptr::from_ref(&dst).cast(),
                len,
            );
            assert_eq!(
                usize::try_from(sent).ok(),
                Some(payload.len()),
                "VRRP from {src} not sent: {}",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// An advertisement of `vrid` at `priority`, encoded as sent from `src`
/// to `ff02::12` (checksum included).
fn advert(vrid: u8, priority: u8, src: Ipv6Addr) -> Vec<u8> {
    let advertisement = Advertisement {
        vrid,
        priority,
        max_advert_interval: AdvertInterval::from_centis(10).unwrap(),
        addresses: vec!["2001:db8::fe".parse().unwrap()],
    };
    emit(&advertisement, IpAddr::V6(src), IpAddr::V6(MULTICAST_V6)).unwrap()
}

/// lb master of the IPv6 instance (priority 150); from the peer namespace
/// come higher-priority advertisements that must be dropped — hop limit
/// 64, a broken checksum, a global source (with the checksum right for it)
/// — and one of another VRID, ignored. None changes anything; each is
/// counted. Then the same advertisement, valid, makes lb step down: the
/// receive path was listening all along.
#[test]
fn spoofed_ipv6_advertisements_change_nothing_and_are_counted() {
    let mut pair = Pair::new("sp", |_| ha_v6(150, None));
    pair.lb.start();
    pair.wait_state("master");
    assert!(holds_v6(&pair.lb.ns));
    let lb_source = link_local(&pair.lb.ns);
    let before = pair.ha();
    let transitions = before["transitions"].as_u64().unwrap();
    assert_eq!(before["invalid_packets"].as_u64(), Some(0), "{before}");

    let peer = &pair.peer;
    let source = link_local(peer);
    let global: Ipv6Addr = "2001:db8::99".parse().unwrap();
    peer.addr("eth0", "2001:db8::99/64");
    send_vrrp6(peer, source, MULTICAST_V6, 64, advert(VRID, 200, source));
    let mut broken = advert(VRID, 200, source);
    broken[7] ^= 0xff;
    send_vrrp6(peer, source, MULTICAST_V6, 255, broken);
    send_vrrp6(peer, global, MULTICAST_V6, 255, advert(VRID, 200, global));
    send_vrrp6(
        peer,
        source,
        MULTICAST_V6,
        255,
        advert(VRID + 1, 200, source),
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let ha = pair.ha();
            ha["invalid_packets"].as_u64() == Some(3) && ha["ignored_packets"].as_u64() == Some(1)
        }),
        "the spoofed advertisements were not counted: {}",
        pair.ha()
    );
    std::thread::sleep(Duration::from_millis(300));
    let ha = pair.ha();
    assert_eq!(ha["state"], "master", "{ha}");
    assert_eq!(ha["transitions"].as_u64(), Some(transitions), "{ha}");
    assert_eq!(ha["invalid_packets"].as_u64(), Some(3), "{ha}");
    let metrics = pair.lb.ns.metrics_page();
    for line in [
        "lb_ha_invalid_packets_total 3",
        "lb_ha_ignored_packets_total 1",
    ] {
        assert!(metrics.contains(line), "no {line} in /metrics:\n{metrics}");
    }
    assert!(holds_v6(&pair.lb.ns));
    println!("spoofed IPv6 VRRP: {ha} (lb speaks from {lb_source})");

    // The control: valid, from the link-local source, hop limit 255.
    let stepped_down = wait_until(Duration::from_secs(5), || {
        send_vrrp6(peer, source, MULTICAST_V6, 255, advert(VRID, 200, source));
        let ha = pair.ha();
        ha["state"] == "backup" && ha["peer"] == source.to_string().as_str()
    });
    assert!(
        stepped_down,
        "a valid advertisement was not heard: {}",
        pair.ha()
    );
    assert!(wait_until(Duration::from_secs(5), || !holds_v6(
        &pair.lb.ns
    )));
}

/// What the peer's packet socket saw: announcements of `v4` (gratuitous
/// ARP: a request from and for the address) and of `v6` (unsolicited NA
/// for it), each with the time it arrived.
#[derive(Default)]
struct Seen {
    arp: Vec<Instant>,
    na: Vec<Instant>,
}

/// A packet socket on `ns`'s eth0 (all protocols) that records the
/// announcements of `v4` and `v6` for `listen`; `probe` runs once, on the
/// first announcement, and its answer is returned with them.
fn capture(
    ns: &Netns,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    listen: Duration,
    probe: impl FnOnce() -> bool + Send + 'static,
) -> std::thread::JoinHandle<(Seen, Option<bool>)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn_thread(move || {
        // SAFETY: a packet socket this closure owns, bound with a valid
        // sockaddr_ll; receive buffers valid for their lengths.
        let fd = unsafe {
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(u16::try_from(libc::ETH_P_ALL).unwrap().to_be()),
            );
            assert!(
                raw >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = OwnedFd::from_raw_fd(raw);
            let mut at: libc::sockaddr_ll = std::mem::zeroed();
            at.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
            at.sll_protocol = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
            at.sll_ifindex = i32::try_from(libc::if_nametoindex(c"eth0".as_ptr())).unwrap();
            let rc = libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&at).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap(),
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            fd
        };
        ready_tx.send(()).unwrap();
        let mut seen = Seen::default();
        let mut probe = Some(probe);
        let mut probed = None;
        let end = Instant::now() + listen;
        let mut buffer = [0u8; 2048];
        while Instant::now() < end {
            let mut ready = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&raw mut ready, 1, 50) } <= 0 {
                continue;
            }
            // SAFETY: `buffer` is valid for its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            let Ok(n) = usize::try_from(n) else { continue };
            let now = Instant::now();
            let Ok(frame) = SlicedPacket::from_ethernet(&buffer[..n]) else {
                continue;
            };
            let announced = match (&frame.net, &frame.transport) {
                (Some(NetSlice::Arp(arp)), _) => arp
                    .to_packet()
                    .try_eth_ipv4()
                    .is_ok_and(|arp| {
                        arp.operation == etherparse::ArpOperation::REQUEST
                            && arp.sender_ipv4 == v4.octets()
                            && arp.target_ipv4 == v4.octets()
                    })
                    .then_some(&mut seen.arp),
                (_, Some(TransportSlice::Icmpv6(icmp))) => matches!(
                    icmp.payload_slice(),
                    Ok(Icmpv6PayloadSlice::NeighborAdvertisement(na)) if na.target_address() == v6
                )
                .then_some(&mut seen.na),
                _ => None,
            };
            if let Some(list) = announced {
                list.push(now);
                if let Some(probe) = probe.take() {
                    probed = Some(probe());
                }
            }
        }
        (seen, probed)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the capture never started");
    handle
}

/// lb alone on the segment becomes master (after its
/// `Master_Down_Interval`) and announces each floating IP `garp_repeat`
/// (4) times, `garp_interval` (200 ms) apart; the first announcement comes
/// only once the address is in place (a socket in lb's namespace binds to
/// it when the peer sees the first one).
#[test]
fn a_new_master_announces_each_floating_ip_garp_repeat_times() {
    const REPEAT: usize = 4;
    const SPACING: Duration = Duration::from_millis(200);
    let v4: Ipv4Addr = "198.51.100.1".parse().unwrap();
    let v6: Ipv6Addr = "2001:db8::fe".parse().unwrap();
    let mut pair = Pair::new("ga", |_| {
        format!(
            "priority: 150, garp_repeat: {REPEAT}, garp_interval: {}ms, \
             floating_ips: ['{v4}/24', '{v6}/64']",
            SPACING.as_millis()
        )
    });
    // A UDP socket opened in lb's namespace, bound from the capture thread
    // when the first announcement arrives: it binds only if the address is
    // there.
    let fd = pair.lb.ns.run(|| {
        // SAFETY: plain socket(2), owned at once.
        unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) }
    });
    let probe = move || {
        // SAFETY: sockaddr_in is plain data; all-zero is valid.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap();
        sin.sin_addr.s_addr = u32::from(v4).to_be();
        // SAFETY: a valid sockaddr_in for a socket we own.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sin).cast(),
                libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap(),
            )
        };
        rc == 0
    };
    let listen = Duration::from_secs(3) + SPACING * 8;
    let seen = capture(&pair.peer, v4, v6, listen, probe);
    pair.lb.start();
    pair.wait_state("master");
    let (seen, probed) = seen.join().unwrap();
    let spacing =
        |times: &[Instant]| -> Vec<Duration> { times.windows(2).map(|w| w[1] - w[0]).collect() };
    println!(
        "announcements: {} gratuitous ARPs, spaced {:?}; {} unsolicited NAs, spaced {:?}",
        seen.arp.len(),
        spacing(&seen.arp),
        seen.na.len(),
        spacing(&seen.na)
    );
    assert_eq!(
        probed,
        Some(true),
        "announced before the address was in place"
    );
    assert_eq!(seen.arp.len(), REPEAT, "gratuitous ARPs");
    assert_eq!(seen.na.len(), REPEAT, "unsolicited NAs");
    for gap in spacing(&seen.arp).into_iter().chain(spacing(&seen.na)) {
        // The spacing is the feature; the allowance is for a busy VM.
        assert!(
            gap + Duration::from_millis(50) >= SPACING && gap <= SPACING * 3,
            "announcements {gap:?} apart, configured {SPACING:?}"
        );
    }
}
