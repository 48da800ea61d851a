//! A backend of an all-port NAT service reaches the world through the
//! balancer like any host: its own connections to a host behind the client
//! network keep its address (they are not mistaken for replies of the
//! service and given the VIP), while clients' connections to the service go
//! on at the same time.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lb_tests::bed::{Bed, tcp_request};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The client's own server, the "host behind the client network".
const OUTSIDE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 9000);
/// Connections each backend opens to it.
const OWN_CONNECTIONS: usize = 10;

fn config(socket: &str) -> String {
    format!(
        "instance: e2eall{}\ninterfaces: [{{ name: eth0 }}, {{ name: eth1 }}]\nservices:\n  \
         - {{ name: any, vip: {VIP}, port: 0, protocol: tcp, forwarding: nat, \
         backends: [{{ address: 192.0.2.11 }}, {{ address: 192.0.2.12 }}], \
         health_check: {{ kind: tcp, port: 80, interval: 200ms, timeout: 200ms }} }}\n\
         control: {{ socket: {socket} }}\n",
        std::process::id()
    )
}

/// One connection to [`OUTSIDE`]: the address the server saw us come from,
/// or `None` if it failed.
fn connect_outside() -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&OUTSIDE, Duration::from_secs(3)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut seen = String::new();
    stream.read_to_string(&mut seen).ok()?;
    (!seen.is_empty()).then_some(seen)
}

#[test]
fn backends_of_an_all_port_nat_service_open_their_own_connections() {
    let socket = format!("/run/lb/e2e-all-port-{}.sock", std::process::id());
    let mut bed = Bed::new(&[11, 12]);
    bed.start_lb(&config(&socket));

    // The server behind the client network answers each connection with
    // the address it came from, then closes. Bounded: it stops when told,
    // and accepts with a timeout.
    let stop = Arc::new(AtomicBool::new(false));
    let outside = {
        let stop = Arc::clone(&stop);
        let listener = bed
            .client
            .run(|| TcpListener::bind(OUTSIDE).expect("bind 9000"));
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    };

    // Clients use the service all the while (ports 80 and 8080: every port
    // goes to the backend's same port).
    let carrying = Arc::new(AtomicBool::new(true));
    let traffic = {
        let carrying = Arc::clone(&carrying);
        bed.client.spawn_thread(move || {
            let (mut served, mut failed) = (0_u32, 0_u32);
            for i in 0..2000_u32 {
                if !carrying.load(Ordering::Relaxed) {
                    break;
                }
                let port = if i % 2 == 0 { 80 } else { 8080 };
                match tcp_request(SocketAddr::new(IpAddr::V4(VIP), port), None) {
                    Some(_) => served += 1,
                    None => failed += 1,
                }
            }
            (served, failed)
        })
    };

    let mut seen = Vec::new();
    for backend in &bed.backends {
        let host = backend.host;
        let outcomes = backend.ns.run(|| {
            (0..OWN_CONNECTIONS)
                .map(|_| connect_outside())
                .collect::<Vec<_>>()
        });
        seen.push((host, outcomes));
    }
    carrying.store(false, Ordering::Relaxed);
    let (served, failed) = traffic.join().expect("client thread");
    stop.store(true, Ordering::Relaxed);
    outside.join().expect("server thread");

    for (host, outcomes) in &seen {
        let own = format!("192.0.2.{host}");
        let kept = outcomes
            .iter()
            .filter(|seen| seen.as_deref() == Some(own.as_str()))
            .count();
        assert_eq!(
            kept, OWN_CONNECTIONS,
            "b{host}: {kept} of {OWN_CONNECTIONS} of its own connections reached the outside \
             host from its own address: {outcomes:?}"
        );
    }
    assert!(served >= 20, "the service carried {served} connections");
    assert_eq!(
        failed,
        0,
        "{failed} of {} service connections failed",
        served + failed
    );

    let stats = bed.lb_command(&["stats", "--output", "json"]);
    assert!(stats.status.success(), "lb stats: {stats:?}");
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    // Each own connection passed its SYN and at least its final ACK.
    let passed = stats["reasons"]["pass_backend_outbound"]
        .as_u64()
        .expect("lb stats counts pass_backend_outbound");
    let opened = u64::try_from(OWN_CONNECTIONS * seen.len()).expect("a handful");
    assert!(
        passed >= 2 * opened,
        "{passed} packets counted as the backends' own traffic, for {opened} connections"
    );
    let output = bed.stop_lb();
    assert!(output.status.success(), "lb run: {output:?}");
}
