//! The namespace helper cleans up after itself, also when a test panics.

use lb_tests::netns::{self, Netns, netns_exists, veth};

fn link_exists_in_root(dev: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", dev])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn a_panicking_test_leaves_no_namespace_or_veth_behind() {
    let (names_tx, names_rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let a = Netns::new("pa");
        let b = Netns::new("pb");
        veth(&a, "va", &b, "vb");
        netns::bridge(&b, "br0");
        let child = a.spawn("sleep", &["30"]);
        names_tx
            .send((a.name().to_string(), b.name().to_string(), child.id()))
            .unwrap();
        panic!("deliberate failure inside a test bed");
    })
    .join();
    assert!(result.is_err(), "the thread was meant to panic");
    let (a, b, pid) = names_rx.recv().unwrap();
    assert!(!netns_exists(&a), "namespace {a} left behind");
    assert!(!netns_exists(&b), "namespace {b} left behind");
    assert!(!link_exists_in_root("va") && !link_exists_in_root("vb"));
    // The child was killed and reaped: its pid no longer exists.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} still alive"
    );
}

#[test]
fn two_namespaces_talk_over_a_veth() {
    let a = Netns::new("ta");
    let b = Netns::new("tb");
    veth(&a, "eth0", &b, "eth0");
    a.addr("eth0", "192.0.2.1/24");
    b.addr("eth0", "192.0.2.2/24");
    let listener = b.run(|| std::net::UdpSocket::bind("192.0.2.2:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    a.run(move || {
        let socket = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
        socket.send_to(b"hello", ("192.0.2.2", port)).unwrap();
    });
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = listener.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from.ip(), std::net::Ipv4Addr::new(192, 0, 2, 1));
}
