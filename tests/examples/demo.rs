//! The lb demo: the real `lb` binary on a veth in a network namespace, real
//! TCP and UDP traffic from a client namespace, and the counters it kept.
//! Run with `cargo xtask demo` (as root). Everything it creates is removed
//! when it ends, also on failure.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use lb_tests::{
    TempFile, lb_binary,
    netns::{Netns, veth, wait_until},
};

const VIP: &str = "203.0.113.10";
const TCP_CONNECTIONS: usize = 20;
const UDP_DATAGRAMS: usize = 20;
const OTHER_DATAGRAMS: usize = 5;

fn main() {
    println!("lb demo: client --veth--> balancer (XDP attached), VIP {VIP}\n");
    let (client, balancer) = test_bed();
    let config = TempFile::new(
        "demo.yaml",
        &format!(
            "instance: {name}\n\
             interfaces:\n  - name: eth0\n\
             services:\n\
             \x20 - {{ name: web, vip: {VIP}, port: 80, protocol: tcp }}\n\
             \x20 - {{ name: dns, vip: {VIP}, port: 53, protocol: udp }}\n",
            name = balancer.name()
        ),
    );
    println!(
        "  config:\n{}",
        indent(&std::fs::read_to_string(config.path()).unwrap())
    );

    // Servers on the balancer host itself: until backends arrive, matched
    // packets are passed to the local stack.
    let tcp = balancer.run(|| TcpListener::bind((VIP, 80)).unwrap());
    let udp = balancer.run(|| UdpSocket::bind((VIP, 53)).unwrap());
    let echo = std::thread::spawn(move || {
        for _ in 0..TCP_CONNECTIONS {
            let (mut stream, _) = tcp.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap();
            stream.write_all(&buf[..n]).unwrap();
        }
    });

    let lb = lb_binary();
    let mut controller = balancer.spawn(
        lb.to_str().unwrap(),
        &["run", "-c", config.path().to_str().unwrap()],
    );
    let attached = wait_until(Duration::from_secs(10), || {
        balancer.has_xdp("eth0") || !controller.running()
    });
    assert!(
        attached && controller.running(),
        "lb run did not attach: {:?}",
        controller.wait()
    );
    println!("  lb run: attached to eth0 in {}", balancer.name());

    println!(
        "  client: {TCP_CONNECTIONS} TCP connections to {VIP}:80, \
         {UDP_DATAGRAMS} UDP datagrams to :53, {OTHER_DATAGRAMS} to :54"
    );
    let answered = client.run(send_traffic);
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut received = 0;
    let mut buf = [0u8; 16];
    while received < UDP_DATAGRAMS && udp.recv_from(&mut buf).is_ok() {
        received += 1;
    }
    echo.join().unwrap();
    println!(
        "  {answered}/{TCP_CONNECTIONS} TCP echoes answered, \
         {received}/{UDP_DATAGRAMS} datagrams received\n"
    );

    controller.signal(libc::SIGINT);
    let output = controller.wait();
    println!(
        "  lb run's log:\n{}",
        indent(&String::from_utf8_lossy(&output.stderr))
    );
    println!("  the counters it kept, per verdict reason:\n");
    println!("{}", indent(&String::from_utf8_lossy(&output.stdout)));
    assert!(output.status.success(), "lb run failed");
    println!(
        "  XDP still attached after stop: {}",
        balancer.has_xdp("eth0")
    );
    println!("\ndemo done; namespaces removed.");
}

/// Client 192.0.2.1 and balancer 192.0.2.2 on one veth; the VIP lives on
/// the balancer's loopback.
fn test_bed() -> (Netns, Netns) {
    let balancer = Netns::new("lb");
    let client = Netns::new("client");
    veth(&client, "eth0", &balancer, "eth0");
    client.addr("eth0", "192.0.2.1/24");
    balancer.addr("eth0", "192.0.2.2/24");
    balancer.addr("lo", &format!("{VIP}/32"));
    client.route("203.0.113.0/24", "192.0.2.2");
    println!(
        "  namespaces {} (client, 192.0.2.1) and {} (balancer, 192.0.2.2)",
        client.name(),
        balancer.name()
    );
    (client, balancer)
}

/// The client's traffic; returns how many TCP echoes came back.
fn send_traffic() -> usize {
    let web: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut answered = 0;
    for _ in 0..TCP_CONNECTIONS {
        let mut stream = TcpStream::connect_timeout(&web, Duration::from_secs(2)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).unwrap();
        answered += usize::from(&buf == b"hello");
    }
    let socket = UdpSocket::bind("192.0.2.1:0").unwrap();
    for _ in 0..UDP_DATAGRAMS {
        socket.send_to(b"query", (VIP, 53)).unwrap();
    }
    for _ in 0..OTHER_DATAGRAMS {
        socket.send_to(b"other", (VIP, 54)).unwrap();
    }
    answered
}

fn indent(text: &str) -> String {
    text.lines().fold(String::new(), |mut out, line| {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
        out
    })
}
