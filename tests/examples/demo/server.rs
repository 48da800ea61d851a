//! The backends' web server: `demo serve NAME` runs one in its own process
//! (so the demo can SIGKILL it like any crashed server). HTTP/1.1 on port
//! 8080, a thread per connection: `GET /healthz` and every other path answer
//! `200` with the backend's name as the body, `Connection: close`. A UDP
//! socket on port 9000 swallows the junk flood (what reaches it was not shed).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

/// The HTTP port the balancers translate the VIP's port 80 to.
pub const HTTP_PORT: u16 = 8080;
/// The UDP port of the sink service (the flood's target).
pub const SINK_PORT: u16 = 9000;

/// Serves until killed.
pub fn serve(name: &str) -> ! {
    let sink = UdpSocket::bind(("::", SINK_PORT)).expect("bind the UDP sink");
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            let _ = sink.recv_from(&mut buf);
        }
    });
    let listener = TcpListener::bind(("::", HTTP_PORT)).expect("bind the HTTP port");
    // The demo waits for this line before it counts the server as started.
    println!("listening");
    for stream in listener.incoming().flatten() {
        let name = name.to_owned();
        std::thread::spawn(move || answer(stream, &name));
    }
    unreachable!("TcpListener::incoming never ends");
}

/// Reads one request (up to its blank line; a client may hold it
/// half-sent for up to 30 s) and answers it.
fn answer(mut stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut request = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
        if request.len() > 8192 {
            return;
        }
    }
    let body = format!("{name}\n");
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}
