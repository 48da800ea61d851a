//! `lb run` end to end: the real binary attaches to a veth in a namespace,
//! real UDP traffic crosses it, and the counters it prints on SIGINT match.

use std::{net::UdpSocket, time::Duration};

use lb_tests::{
    TempFile, lb_binary,
    netns::{Netns, veth, wait_until},
};

const SERVICE_DATAGRAMS: usize = 10;
const OTHER_DATAGRAMS: usize = 7;

#[test]
fn lb_run_attaches_counts_and_detaches() {
    let lb_ns = Netns::new("lb");
    let client = Netns::new("cl");
    veth(&client, "eth0", &lb_ns, "eth0");
    client.addr("eth0", "192.0.2.1/24");
    lb_ns.addr("eth0", "192.0.2.2/24");
    let config = TempFile::new(
        "lb.yaml",
        &format!(
            "instance: {}\ninterfaces:\n  - name: eth0\n    xdp_mode: native\n\
             services:\n  - name: dns\n    vip: 192.0.2.2\n    port: 5353\n    protocol: udp\n",
            lb_ns.name()
        ),
    );
    let lb = lb_binary();
    let lb_path = lb.to_str().unwrap();
    let config_path = config.path().to_str().unwrap();
    let mut controller = lb_ns.spawn(lb_path, &["run", "-c", config_path, "--output", "json"]);
    assert!(
        wait_until(Duration::from_secs(10), || lb_ns.has_xdp("eth0")
            || !controller.running()),
        "lb run did not attach"
    );
    assert!(
        controller.running(),
        "lb run exited early: {:?}",
        controller.wait()
    );

    // The service port has a real listener: passed packets must reach it.
    let listener = lb_ns.run(|| UdpSocket::bind("192.0.2.2:5353").unwrap());
    listener
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.run(|| {
        let socket = UdpSocket::bind("192.0.2.1:0").unwrap();
        for i in 0..SERVICE_DATAGRAMS {
            socket
                .send_to(&[u8::try_from(i).unwrap()], "192.0.2.2:5353")
                .unwrap();
        }
        for _ in 0..OTHER_DATAGRAMS {
            socket.send_to(b"x", "192.0.2.2:5354").unwrap();
        }
    });
    let mut buf = [0u8; 8];
    for _ in 0..SERVICE_DATAGRAMS {
        listener
            .recv_from(&mut buf)
            .expect("datagram passed to the stack");
    }

    controller.signal(libc::SIGINT);
    let output = controller.wait();
    assert!(output.status.success(), "lb run failed: {output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("JSON from lb run ({e}): {output:?}"));
    let reasons = &report["reasons"];
    assert_eq!(
        reasons["pass_service_matched"], SERVICE_DATAGRAMS as u64,
        "{report}"
    );
    assert!(
        reasons["pass_no_service"].as_u64().unwrap() >= OTHER_DATAGRAMS as u64,
        "{report}"
    );
    assert!(!lb_ns.has_xdp("eth0"), "XDP program left attached");
}
