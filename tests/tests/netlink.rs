//! The rtnetlink edge (`lb::netlink`) against a real kernel: two namespaces
//! joined by a veth pair, the test thread inside side A.
//!
//! ```text
//!   A: nl0 192.0.2.1/24 2001:db8::1/64  ──veth──  B: nl1 192.0.2.11/24 2001:db8::11/64
//!      198.51.100.0/24 via 192.0.2.11 mtu 1300        lo 198.51.100.1/32
//!      unreachable 203.0.113.0/24
//! ```

use std::{
    fmt::Write as _,
    io::Write,
    net::IpAddr,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use lb::netlink::{Family, Monitor, Neighbour, Netlink, NetlinkError, RouteEntry, RouteKind, nud};
use lb_tests::netns::{Netns, veth};

/// The two sides. Dropping it deletes both namespaces.
struct Bed {
    a: Netns,
    b: Netns,
    /// `nl0`'s index in A.
    ifindex: u32,
}

/// Builds the bed and moves the calling (test) thread into A.
fn bed(ipv6: bool) -> Bed {
    let a = Netns::new("nla");
    let b = Netns::new("nlb");
    if !ipv6 {
        // New interfaces in A get no IPv6 (no link-local address, no DAD,
        // no MLD): the monitor test needs a quiet namespace.
        a.sysctl("net.ipv6.conf.default.disable_ipv6=1");
    }
    veth(&a, "nl0", &b, "nl1");
    a.addr("nl0", "192.0.2.1/24");
    b.addr("nl1", "192.0.2.11/24");
    if ipv6 {
        a.addr("nl0", "2001:db8::1/64");
        b.addr("nl1", "2001:db8::11/64");
    }
    b.addr("lo", "198.51.100.1/32");
    let output = a.ip(&["-o", "link", "show", "dev", "nl0"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let ifindex = text
        .split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {text}"));
    a.enter();
    Bed { a, b, ifindex }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

/// Polls every 10 ms, for at most 10 s, until the entry is usable.
fn wait_usable(netlink: &mut Netlink, addr: IpAddr, ifindex: u32) -> Neighbour {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = netlink.neighbour_get(addr, ifindex).expect("neighbour get");
        if let Some(neighbour) = entry.filter(Neighbour::usable) {
            return neighbour;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not resolved within 10 s: {entry:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn route_get_reports_oif_gateway_mtu_and_kind() {
    let bed = bed(true);
    bed.a.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.11",
        "mtu",
        "1300",
    ]);
    bed.a.ip(&["route", "add", "unreachable", "203.0.113.0/24"]);
    bed.a.ip(&["route", "add", "blackhole", "203.0.113.128/25"]);
    bed.a.ip(&["route", "add", "prohibit", "203.0.113.64/26"]);
    let mut netlink = Netlink::open().expect("open");

    for on_link in ["192.0.2.11", "2001:db8::11"] {
        let route = netlink.route_get(ip(on_link)).expect("route get");
        assert_eq!(route.kind, RouteKind::Unicast, "{on_link}: {route:?}");
        assert_eq!(route.oif, bed.ifindex, "{on_link}: {route:?}");
        assert_eq!(route.gateway, None, "{on_link}: {route:?}");
    }

    let route = netlink.route_get(ip("198.51.100.1")).expect("route get");
    assert_eq!(route.kind, RouteKind::Unicast, "{route:?}");
    assert_eq!(route.oif, bed.ifindex, "{route:?}");
    assert_eq!(route.gateway, Some(ip("192.0.2.11")), "{route:?}");
    assert_eq!(route.source, Some(ip("192.0.2.1")), "{route:?}");
    assert_eq!(route.mtu, Some(1300), "{route:?}");

    for local in ["192.0.2.1", "2001:db8::1"] {
        let route = netlink.route_get(ip(local)).expect("route get");
        assert_eq!(route.kind, RouteKind::Local, "{local}: {route:?}");
    }

    for (dst, kind) in [
        ("203.0.113.1", RouteKind::Unreachable),
        ("203.0.113.129", RouteKind::Blackhole),
        ("203.0.113.65", RouteKind::Prohibit),
        // No route at all (A has no default route).
        ("10.255.0.1", RouteKind::Unreachable),
    ] {
        let route = netlink.route_get(ip(dst)).expect("route get");
        assert_eq!(route.kind, kind, "{dst}: {route:?}");
        assert_eq!(route.oif, 0, "{dst}: {route:?}");
    }
}

#[test]
fn managed_neighbours_resolve_and_are_forgotten() {
    let bed = bed(true);
    let b_mac = bed.b.mac("nl1");
    let mut netlink = Netlink::open().expect("open");

    for addr in [ip("192.0.2.11"), ip("2001:db8::11")] {
        let before = netlink.neighbour_get(addr, bed.ifindex).expect("get");
        assert!(
            !before.is_some_and(|n| n.usable()),
            "{addr} resolved before anything asked: {before:?}"
        );

        assert!(netlink.neighbour_manage(addr, bed.ifindex).expect("manage"));
        let neighbour = wait_usable(&mut netlink, addr, bed.ifindex);
        assert_eq!(neighbour.mac, Some(b_mac), "{addr}: {neighbour:?}");
        assert!(neighbour.managed, "{addr}: {neighbour:?}");
        // Asking again changes nothing.
        assert!(!netlink.neighbour_manage(addr, bed.ifindex).expect("manage"));

        netlink.neighbour_forget(addr, bed.ifindex).expect("forget");
        let after = netlink.neighbour_get(addr, bed.ifindex).expect("get");
        assert!(after.is_none(), "{addr} still there: {after:?}");
        // Forgetting what is not there is fine.
        netlink
            .neighbour_forget(addr, bed.ifindex)
            .expect("forget again");
    }
}

#[test]
fn permanent_neighbours_are_left_alone() {
    let bed = bed(true);
    bed.a.ip(&[
        "neigh",
        "add",
        "192.0.2.11",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "nl0",
        "nud",
        "permanent",
    ]);
    let mut netlink = Netlink::open().expect("open");
    let addr = ip("192.0.2.11");

    assert!(!netlink.neighbour_manage(addr, bed.ifindex).expect("manage"));
    let entry = netlink
        .neighbour_get(addr, bed.ifindex)
        .expect("get")
        .expect("still there");
    assert_eq!(entry.state, nud::PERMANENT, "{entry:?}");
    assert_eq!(entry.mac, Some([2, 0, 0, 0, 0, 0x99]), "{entry:?}");
    assert!(!entry.managed, "{entry:?}");

    // Nor does forget remove what it did not make.
    netlink.neighbour_forget(addr, bed.ifindex).expect("forget");
    let entry = netlink.neighbour_get(addr, bed.ifindex).expect("get");
    assert_eq!(entry.map(|n| n.state), Some(nud::PERMANENT));
}

#[test]
fn monitor_sees_neighbour_changes_and_is_quiet_otherwise() {
    let bed = bed(false);
    let mut monitor = Monitor::open().expect("open monitor");
    // Let the bed's own set-up events pass (bounded).
    let settle = Instant::now() + Duration::from_secs(3);
    while monitor.wait(Duration::from_millis(100)).expect("wait") > 0 {
        assert!(Instant::now() < settle, "namespace never went quiet");
    }

    assert_eq!(
        monitor.wait(Duration::from_millis(100)).expect("wait"),
        0,
        "notifications with nothing happening"
    );

    bed.a.ip(&[
        "neigh",
        "replace",
        "192.0.2.11",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "nl0",
        "nud",
        "permanent",
    ]);
    let started = Instant::now();
    let count = monitor.wait(Duration::from_secs(10)).expect("wait");
    println!("{count} notifications after {:?}", started.elapsed());
    assert!(count > 0, "no notification within 10 s");
}

#[test]
fn link_reports_mac_mtu_and_state() {
    let bed = bed(true);
    bed.a.ip(&["link", "set", "dev", "nl0", "mtu", "1400"]);
    let mut netlink = Netlink::open().expect("open");

    let link = netlink.link(bed.ifindex).expect("link");
    assert_eq!(link.mac, Some(bed.a.mac("nl0")), "{link:?}");
    assert_eq!(link.mtu, 1400, "{link:?}");
    assert!(link.up, "{link:?}");

    bed.b.ip(&["link", "set", "dev", "nl1", "down"]);
    assert!(!netlink.link(bed.ifindex).expect("link").up);

    let error = netlink.link(9999).expect_err("no such link");
    assert_eq!(error.errno(), Some(libc::ENODEV), "{error}");
    assert!(error.to_string().contains("#9999"), "{error}");
}

/// Floating IPs as HA adds and removes them: an IPv4 address and an IPv6
/// one (`nodad`, usable at once) added, listed as `ip addr show` lists
/// them, removed, and a second removal told apart from a failure.
#[test]
fn addresses_are_added_listed_and_removed() {
    let bed = bed(true);
    let mut netlink = Netlink::open().expect("open");
    let listed = |netlink: &mut Netlink, family| -> Vec<String> {
        netlink
            .addresses(bed.ifindex, family)
            .expect("address dump")
            .iter()
            .map(|a| a.address.to_string())
            .collect()
    };
    let shown = |family: &str| -> Vec<String> {
        let output = bed.a.ip(&[family, "-o", "addr", "show", "dev", "nl0"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(3).map(str::to_string))
            .collect()
    };
    for (address, family, flag) in [
        ("198.51.100.7/24", Family::V4, "-4"),
        ("192.0.2.254/24", Family::V4, "-4"),
        ("2001:db8:5::1/64", Family::V6, "-6"),
    ] {
        let net = address.parse().unwrap();
        netlink.address_add(bed.ifindex, net).expect("add");
        // Again: a replace, not an error.
        netlink.address_add(bed.ifindex, net).expect("add again");
        let now = listed(&mut netlink, family);
        assert!(now.contains(&address.to_string()), "{now:?}");
        assert_eq!(now, shown(flag), "netlink and ip disagree");
        let added = netlink
            .addresses(bed.ifindex, family)
            .unwrap()
            .into_iter()
            .find(|a| a.address == net)
            .unwrap();
        assert!(!added.tentative(), "{added:?}");
        assert!(netlink.address_delete(bed.ifindex, net).expect("delete"));
        assert!(
            !netlink
                .address_delete(bed.ifindex, net)
                .expect("delete again")
        );
        assert!(!listed(&mut netlink, family).contains(&address.to_string()));
    }
    // The address VRRP speaks from: the first IPv4 one, the link-local.
    let v4 = lb::netlink::primary_address("nl0", Family::V4)
        .unwrap()
        .unwrap();
    assert_eq!(v4.address.to_string(), "192.0.2.1/24");
    let v6 = lb::netlink::primary_address("nl0", Family::V6)
        .unwrap()
        .unwrap();
    assert!(v6.link_local(), "{v6:?}");
    let error = netlink
        .address_add(9999, "198.51.100.7/24".parse().unwrap())
        .expect_err("no such link");
    assert!(
        error.to_string().contains("198.51.100.7/24 dev #9999"),
        "{error}"
    );
}

/// Runs `ip -batch -` in `ns` with `commands` on its standard input.
fn ip_batch(ns: &Netns, commands: &str) {
    let mut child = ns
        .command("ip", &["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ip -batch");
    // Written from a thread of its own while the output is read: ip's
    // stderr filling up would otherwise stop it reading its input.
    let mut stdin = child.stdin.take().expect("stdin");
    let commands = commands.to_owned();
    let writer = thread::spawn(move || stdin.write_all(commands.as_bytes()));
    let output = child.wait_with_output().expect("ip -batch");
    writer
        .join()
        .expect("writer thread")
        .expect("write to ip -batch");
    assert!(output.status.success(), "ip -batch: {output:?}");
}

/// The prefix as `ip -j route show` spells it: `default`, a bare address
/// for host routes, else `ADDR/LEN`.
fn ip_json_dst(route: &RouteEntry) -> String {
    let host = if route.dst.is_ipv4() { 32 } else { 128 };
    match route.prefix_len {
        0 => "default".to_owned(),
        len if len == host => route.dst.to_string(),
        len => format!("{}/{len}", route.dst),
    }
}

#[test]
fn route_dump_lists_the_main_table_like_ip_route_show() {
    let bed = bed(true);
    ip_batch(
        &bed.a,
        "route add default via 192.0.2.254
         route add 198.51.100.0/24 via 192.0.2.11
         route add 198.51.100.64/26 via 192.0.2.11 mtu 1300
         route add unreachable 203.0.113.0/24
         route add 203.0.113.128/25 nexthop via 192.0.2.11 nexthop via 192.0.2.12
         route add ::/0 via 2001:db8::fe
         route add 2001:db8:1::/64 via 2001:db8::11
         route add unreachable 2001:db8:2::/64
         route add 198.51.100.128/25 via 192.0.2.12 table 100
         route add 2001:db8:3::/64 via 2001:db8::12 table 100",
    );
    let mut netlink = Netlink::open().expect("open");
    let unicast = |dst: &str, prefix_len| RouteEntry {
        dst: ip(dst),
        prefix_len,
        kind: RouteKind::Unicast,
        oif: bed.ifindex,
        gateway: None,
        mtu: None,
        multipath: false,
    };
    let via = |dst: &str, prefix_len, gateway: &str| RouteEntry {
        gateway: Some(ip(gateway)),
        ..unicast(dst, prefix_len)
    };

    let mut v4 = netlink.route_dump(Family::V4).expect("route dump");
    v4.sort_by_key(|route| (route.dst, route.prefix_len));
    let expected_v4 = [
        via("0.0.0.0", 0, "192.0.2.254"),
        unicast("192.0.2.0", 24),
        via("198.51.100.0", 24, "192.0.2.11"),
        RouteEntry {
            mtu: Some(1300),
            ..via("198.51.100.64", 26, "192.0.2.11")
        },
        RouteEntry {
            kind: RouteKind::Unreachable,
            oif: 0,
            ..unicast("203.0.113.0", 24)
        },
        // ECMP: no single next hop; the caller asks the FIB.
        RouteEntry {
            oif: 0,
            multipath: true,
            ..unicast("203.0.113.128", 25)
        },
    ];
    assert_eq!(v4, expected_v4);

    let mut v6 = netlink.route_dump(Family::V6).expect("route dump");
    v6.sort_by_key(|route| (route.dst, route.prefix_len));
    let expected_v6 = [
        via("::", 0, "2001:db8::fe"),
        unicast("2001:db8::", 64),
        via("2001:db8:1::", 64, "2001:db8::11"),
        // IPv6 unreachable routes name `lo` (index 1 in a new namespace).
        RouteEntry {
            kind: RouteKind::Unreachable,
            oif: 1,
            ..unicast("2001:db8:2::", 64)
        },
        unicast("fe80::", 64),
    ];
    assert_eq!(v6, expected_v6);

    // The same prefixes `ip route show` lists (table main, no local or
    // multicast routes), asked of the namespace itself.
    for (family, routes) in [("-4", &v4), ("-6", &v6)] {
        let output = bed.a.ip(&["-j", family, "route", "show", "table", "main"]);
        let listed: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("ip -j route show");
        let mut listed: Vec<String> = listed
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|route| route["dst"].as_str().expect("dst").to_owned())
            .collect();
        listed.sort();
        let mut ours: Vec<String> = routes.iter().map(ip_json_dst).collect();
        ours.sort();
        assert_eq!(ours, listed, "ip {family} route show");
    }

    // A second dump on the same socket, and other requests between dumps,
    // work as the first.
    assert!(netlink.link(bed.ifindex).expect("link").up);
    let mut again = netlink.route_dump(Family::V4).expect("route dump");
    again.sort_by_key(|route| (route.dst, route.prefix_len));
    assert_eq!(again, expected_v4);
}

#[test]
fn route_dump_spans_datagrams_and_recovers_from_a_dump_given_up() {
    let bed = bed(true);
    // 3000 routes of 136 bytes: some 400 KiB, a dozen datagrams.
    let mut commands = String::new();
    for n in 0..3000u32 {
        writeln!(commands, "route add 2001:db8:1:{n:x}::/64 via 2001:db8::11")
            .expect("to a String");
    }
    ip_batch(&bed.a, &commands);
    let mut netlink = Netlink::open().expect("open");

    let routes = netlink.route_dump(Family::V6).expect("route dump");
    // Plus 2001:db8::/64 and fe80::/64.
    assert_eq!(routes.len(), 3002);
    let via: Vec<_> = routes
        .iter()
        .filter(|route| route.gateway == Some(ip("2001:db8::11")))
        .collect();
    assert_eq!(via.len(), 3000);
    assert!(via.iter().all(|route| route.prefix_len == 64
        && route.oif == bed.ifindex
        && route.kind == RouteKind::Unicast));

    // A limit stops the dump half-way; the kernel would refuse the next
    // dump on this socket (EBUSY) unless the rest is read first.
    let error = netlink
        .route_dump_at_most(Family::V6, 10)
        .expect_err("over the limit");
    assert!(
        matches!(error, NetlinkError::TooLarge { limit: 10, .. }),
        "{error}"
    );
    assert_eq!(
        netlink.route_dump(Family::V6).expect("route dump").len(),
        3002
    );
    // Also with a request in between, which reads past the rest.
    netlink
        .route_dump_at_most(Family::V6, 10)
        .expect_err("over the limit");
    assert!(netlink.link(bed.ifindex).expect("link").up);
    assert_eq!(
        netlink.route_dump(Family::V6).expect("route dump").len(),
        3002
    );
    assert_eq!(netlink.route_dump(Family::V4).expect("route dump").len(), 1);
}
