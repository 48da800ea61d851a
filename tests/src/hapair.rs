//! Two balancers on one veth (eth0 to eth0), VRRP over multicast, both
//! families of floating IPs: the HA pair of the release and fault tests.

use crate::{
    TempFile,
    lbrun::LbRun,
    netns::{Netns, veth},
};

/// What the master holds, both families (VRRP runs over IPv4; the IPv6
/// address moves with the others).
pub const FLOATING: [&str; 3] = ["198.51.100.1/24", "192.0.2.254/24", "2001:db8::fe/64"];

/// The floating IPs `balancer`'s interface holds.
pub fn holds(balancer: &LbRun) -> Vec<&'static str> {
    let listed = balancer.ns.ip(&["-o", "addr", "show", "dev", "eth0"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    FLOATING
        .into_iter()
        .filter(|ip| text.split_whitespace().any(|word| word == *ip))
        .collect()
}

/// Balancer 0 (192.0.2.1, priority 150) and 1 (192.0.2.2, 100), eth0 to
/// eth0, VRID 52, 100 ms advertisements, preempting; not started. Each
/// serves metrics on 127.0.0.1:9477 in its namespace.
pub fn pair(tag: &str) -> [LbRun; 2] {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    veth(&a, "eth0", &b, "eth0");
    let pid = std::process::id();
    [(1u8, 150u8, a), (2, 100, b)].map(|(i, priority, ns)| {
        ns.addr("eth0", &format!("192.0.2.{i}/24"));
        let socket = format!("/run/lb/rel-{tag}{i}-{pid}.sock");
        let instance = format!("rel{tag}{i}x{pid}");
        let floating = FLOATING.map(|f| format!("'{f}'")).join(", ");
        let config = TempFile::new(
            &format!("rel{i}.yaml"),
            &format!(
                "instance: {instance}\ninterfaces: [{{ name: eth0 }}]\nservices:\n\
                 \x20 - {{ name: web, vip: 203.0.113.11, port: 80, protocol: tcp, forwarding: dsr, \
                 backends: [{{ address: 192.0.2.11 }}] }}\n\
                 ha: {{ interface: eth0, virtual_router_id: 52, priority: {priority}, \
                 advert_interval: 100ms, preempt: true, floating_ips: [{floating}] }}\n\
                 control: {{ socket: {socket}, metrics: 127.0.0.1:9477 }}\n"
            ),
        );
        LbRun::new(ns, config, socket, instance)
    })
}
