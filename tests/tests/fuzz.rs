//! Fuzz targets for every parser of untrusted bytes (`lb_tests::fuzz`): the
//! configuration, the keepalived.conf `lb import` reads, VRRP advertisements, health-check replies (HTTP and UDP),
//! both sides of the agent protocol, BIRD's control-socket replies and
//! connection-sync messages. On
//! any input: no panic, no unbounded buffering, and garbage gets an error
//! that says something; where the right answer is known without the parser
//! (a BIRD reply's last code, a configuration `lb check` accepts being
//! plannable), it is the parser's answer.
//!
//! `cargo test` runs a bounded number of cases per target (about 30 s in
//! all in a debug build); `cargo xtask fuzz --seconds N` runs each for N
//! seconds. Seeds live in `fuzz/corpus/<target>/`; a failure prints the
//! input to add there.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb::{agent, config::Config, dynamic, health, import, plan::Planner, sync, vrrp};
use lb_tests::fuzz::fuzz;

/// An error message an operator can act on: not empty.
fn says_something(message: &str) -> Result<(), String> {
    if message.trim().is_empty() {
        Err("an empty error message".into())
    } else {
        Ok(())
    }
}

const YAML_TOKENS: &[&[u8]] = &[
    b"\n",
    b"\n  ",
    b"\n    - ",
    b": ",
    b"- ",
    b"{",
    b"}",
    b"[",
    b"]",
    b", ",
    b"'",
    b"\"",
    b"&a ",
    b"*a",
    b"<<: *a",
    b"!!str ",
    b"!!binary ",
    b"~",
    b"null",
    b"true",
    b"0x10",
    b"-1",
    b"4294967296",
    b"99999999999999999999",
    b"1e400",
    b".nan",
    b"0.0.0.0",
    b"::",
    b"2001:db8::1",
    b"203.0.113.1",
    b"services:",
    b"backends:",
    b"vip: ",
    b"port: ",
    b"weight: ",
    b"tier: ",
    b"protocol: ",
    b"scheduler: ",
    b"forwarding: ",
    b"ha:",
    b"health_check:",
    b"dataplane:",
    b"interfaces:",
    b"ring_size: ",
    b"interval: ",
    b"timeout: ",
    b"kind: ",
    b"expect_status: ",
    b"vrid: ",
    b"priority: ",
    b"advert_interval: ",
    b"unicast_peers: ",
    b"control:",
    b"guard:",
    b"instance: ",
    b"1ms",
    b"0s",
    b"9999999h",
];

/// Configuration text: parsed and validated (what `lb check` does), and a
/// configuration that passes is planned, which must succeed: `lb check`
/// accepting a file `lb run` then cannot plan would be a check that lies
/// (planned when the ring is small enough to plan quickly).
#[test]
fn fuzz_config() {
    fuzz("config", YAML_TOKENS, 1_000, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        match Config::parse(&text) {
            Err(error) => says_something(&error.to_string()),
            Ok(config) => {
                let sizes = &config.dataplane;
                if sizes.ring_size <= 65_537 && sizes.max_backends <= 4096 {
                    let mut planner =
                        Planner::new(sizes.ring_size, sizes.max_services, sizes.max_backends);
                    if let Err(error) = planner.plan(&config, &BTreeMap::new()) {
                        return Err(format!(
                            "lb check accepts it, but the planner refuses it: {error}"
                        ));
                    }
                }
                Ok(())
            }
        }
    });
}

const KEEPALIVED_TOKENS: &[&[u8]] = &[
    b"\n",
    b" ",
    b"{",
    b"}",
    b"\"",
    b"#",
    b"!",
    b"@id ",
    b"@^id ",
    b"include *.conf\n",
    b"include k.conf\n",
    b"global_defs {\n router_id x\n}\n",
    b"virtual_server ",
    b"virtual_server group G ",
    b"virtual_server_group G {\n",
    b"virtual_server fwmark 1 ",
    b"real_server ",
    b"sorry_server ",
    b"203.0.113.10 80 ",
    b"192.0.2.11 8080 ",
    b"2001:db8::1-ff 53 ",
    b"203.0.113.1-20 0 ",
    b"lb_algo fo\n",
    b"lb_algo wrr\n",
    b"lb_kind DR\n",
    b"protocol UDP\n",
    b"persistence_timeout 50\n",
    b"weight 0\n",
    b"HTTP_GET {\n url {\n path /\n status_code 200-299 }\n",
    b"MISC_CHECK {\n misc_path \"/bin/x 'a b'\"\n",
    b"UDP_CHECK {\n payload 00ff\n",
    b"PING_CHECK {\n",
    b"connect_timeout 99999999999\n",
    b"delay_loop 0.001\n",
    b"retry 4294967295\n",
    b"vrrp_instance V {\n",
    b"interface eth0\n",
    b"virtual_router_id 51\n",
    b"priority 255\n",
    b"advert_int 0.005\n",
    b"virtual_ipaddress {\n 203.0.113.10/24 dev eth1\n}\n",
    b"unicast_peer {\n 192.0.2.3\n}\n",
    b"lvs_sync_daemon eth0 V port 0\n",
];

/// Files in memory for the importer: the fuzzed text as the root, and a
/// small directory its includes may name (itself among them).
struct FuzzFiles(String);

impl import::Files for FuzzFiles {
    fn read(&self, path: &std::path::Path) -> std::io::Result<String> {
        match path.to_str() {
            Some("/k/keepalived.conf" | "/k/k.conf") => Ok(self.0.clone()),
            Some("/k/a.conf") => Ok("virtual_server 203.0.113.9 80 {\n}\n".into()),
            _ => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<(String, bool)>> {
        if dir == std::path::Path::new("/k") {
            Ok(["k.conf", "a.conf"]
                .map(|name| (name.to_string(), false))
                .to_vec())
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }
}

/// keepalived.conf text for `lb import keepalived`: refused with a message
/// (an error names a file and line), or a configuration lb check accepts.
#[test]
fn fuzz_keepalived() {
    fuzz("keepalived", KEEPALIVED_TOKENS, 1_000, |bytes| {
        let files = FuzzFiles(String::from_utf8_lossy(bytes).into_owned());
        let root = std::path::Path::new("/k/keepalived.conf");
        let options = import::Options {
            config_id: Some("id".into()),
            ..import::Options::default()
        };
        match import::keepalived(root, &files, &options) {
            Err(error) => says_something(&error.to_string()),
            Ok(imported) => Config::parse(&imported.yaml)
                .map(|_| ())
                .map_err(|e| format!("imported, but lb check refuses it: {e}\n{}", imported.yaml)),
        }
    });
}

/// The checksum a VRRP payload needs from `src` to `dst` (RFC 5798 §5.2.8;
/// the IPv4 pseudo-header for IPv4), computed here, not by lb.
fn vrrp_checksummed(payload: &[u8], src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut out = payload.to_vec();
    if out.len() < 8 {
        return out;
    }
    out[6] = 0;
    out[7] = 0;
    let mut pseudo = Vec::new();
    let len = u32::try_from(out.len()).expect("small");
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 112]);
            pseudo.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 112]);
        }
        _ => return out,
    }
    pseudo.extend_from_slice(&out);
    let mut sum: u64 = pseudo
        .chunks(2)
        .map(|pair| u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = !u16::try_from(sum).expect("folded");
    out[6..8].copy_from_slice(&sum.to_be_bytes());
    out
}

/// A VRRP payload: rejected with a reason, or decoded into an advertisement
/// that encodes back to one that decodes the same.
fn vrrp_round_trip(payload: &[u8], src: IpAddr, dst: IpAddr) -> Result<(), String> {
    let advert = match vrrp::parse(payload, src, dst) {
        Err(error) => return says_something(&error.to_string()),
        Ok(advert) => advert,
    };
    let bytes = vrrp::emit(&advert, src, dst)
        .map_err(|e| format!("parsed {advert:?} but cannot emit it: {e}"))?;
    let again = vrrp::parse(&bytes, src, dst)
        .map_err(|e| format!("emitted {advert:?} does not parse: {e}"))?;
    if again == advert {
        Ok(())
    } else {
        Err(format!("{advert:?} came back as {again:?}"))
    }
}

/// VRRP advertisements, as received (bad checksums mostly) and with the
/// checksum made right so the fields past it are reached.
#[test]
fn fuzz_vrrp() {
    let v4 = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        IpAddr::V4(vrrp::MULTICAST_V4),
    );
    let v6 = (
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)),
        IpAddr::V6(vrrp::MULTICAST_V6),
    );
    fuzz("vrrp", &[], 5_000, |bytes| {
        for (src, dst) in [v4, v6] {
            vrrp_round_trip(bytes, src, dst)?;
            vrrp_round_trip(&vrrp_checksummed(bytes, src, dst), src, dst)?;
        }
        vrrp_round_trip(bytes, v4.0, v6.1)?;
        for family in [vrrp::Family::V4, vrrp::Family::V6] {
            if let Ok(packet) = vrrp::Packet::new_checked(bytes, family) {
                let _ = (packet.vrid(), packet.priority(), packet.checksum());
                let _ = (
                    packet.max_advert_interval(),
                    packet.version(),
                    packet.kind(),
                );
                let count = packet.addresses().count();
                if count != usize::from(packet.count()) {
                    return Err(format!(
                        "{count} addresses for a count of {}",
                        packet.count()
                    ));
                }
            }
        }
        Ok(())
    });
}

const HTTP_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 ",
    b"HTTP/1.0 ",
    b"200",
    b"500",
    b"Content-Length: ",
    b"content-length:",
    b"Transfer-Encoding: chunked",
    b"0",
    b"18446744073709551616",
    b"healthy",
    b" ",
    b"\n",
    b":",
];

/// Reads at most this much per call, as the prober does.
const READ_SIZE: usize = 4096;
/// The prober's limits: status line and headers, then body.
const HEAD_LIMIT: usize = 16 * 1024;
const BODY_LIMIT: usize = 64 * 1024;

/// An HTTP check's reply, fed to the prober's judge the way reads deliver
/// it (in pieces of varying size, never more than one read at a time): a
/// verdict must come before the buffer outgrows the prober's limits, and a
/// complete reply always gets one.
#[test]
fn fuzz_health_http() {
    fuzz("health_http", HTTP_TOKENS, 2_000, |bytes| {
        let sizes = [1, 7, READ_SIZE, 100, 2, READ_SIZE, 13];
        for (status, body) in [(200, None), (200, Some("healthy")), (204, Some(""))] {
            let mut end = 0;
            for size in sizes.iter().cycle() {
                end = (end + size).min(bytes.len());
                let complete = end == bytes.len();
                match health::judge_http_response(&bytes[..end], complete, status, body) {
                    Some(Ok(())) => break,
                    Some(Err(reason)) => {
                        says_something(&reason)?;
                        break;
                    }
                    None if complete => {
                        return Err("no verdict on a complete reply".into());
                    }
                    None if end > HEAD_LIMIT + READ_SIZE + 4 + BODY_LIMIT => {
                        return Err(format!("still undecided after {end} bytes"));
                    }
                    None => {}
                }
            }
        }
        Ok(())
    });
}

/// A UDP check's reply.
#[test]
fn fuzz_health_udp() {
    fuzz("health_udp", &[b"pong", b"\0"], 1_000, |bytes| {
        for expect in [None, Some("pong"), Some("")] {
            if let Err(reason) = health::judge_udp_reply(bytes, expect) {
                says_something(&reason)?;
            }
        }
        Ok(())
    });
}

const BIRD_TOKENS: &[&[u8]] = &[
    b"\n",
    b"0001 BIRD 2.0.12 ready.\n",
    b"0002-",
    b"0003 ",
    b"0019 Nothing to do\n",
    b"8002 ",
    b"9001 ",
    b" ",
    b"-",
    b"Reconfigured",
];

/// The code of a BIRD reply's last line, as BIRD's control protocol
/// defines it (written here from the protocol, not from lb's reader): each
/// line starts with a 4-digit code, then `-` when more lines follow or a
/// space on the last one; the first line that is four digits and a space
/// ends the reply (the socket closing right after it, before its newline,
/// loses only its text). `None`: the reply never ends.
fn final_code(reply: &[u8]) -> Option<&[u8]> {
    reply.split(|b| *b == b'\n').find_map(|line| {
        let code = line.get(..4)?;
        (code.iter().all(u8::is_ascii_digit) && line.get(4) == Some(&b' ')).then_some(code)
    })
}

/// BIRD's reply to `configure` as lb reads it off the control socket: no
/// panic; taken as done only when its last line says so (0003
/// reconfigured, 0004 in progress, 0018 confirmed, 0019 nothing to do), so
/// an error reply (8xxx, 9xxx: a parse error, a runtime error) is always
/// refused; and a refusal says something.
#[test]
fn fuzz_bird_reply() {
    const DONE: [&[u8]; 4] = [b"0003", b"0004", b"0018", b"0019"];
    fuzz("bird_reply", BIRD_TOKENS, 1_000, |bytes| {
        let code = final_code(bytes);
        match lb::bird::configure_reply(bytes) {
            Ok(()) => match code {
                Some(code) if DONE.contains(&code) => Ok(()),
                Some(code) => Err(format!(
                    "taken as done, but the last line's code is {}",
                    String::from_utf8_lossy(code)
                )),
                None => Err("taken as done, but the reply never ends".into()),
            },
            Err(error) => says_something(&error.to_string()),
        }
    });
}

const AGENT_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1 200 OK",
    b"{\"load\": ",
    b"}",
    b"1e308",
    b"-0",
    b"1e999",
    b"null",
    b"[",
    b"\"load\"",
    b"GET /load HTTP/1.1",
    b"Host: lb-agent",
];

/// An agent's answer as the balancer reads it, and the weights the
/// `resource` scheduler derives from the load: within their bounds.
#[test]
fn fuzz_agent_answer() {
    fuzz("agent_answer", AGENT_TOKENS, 2_000, |bytes| {
        let bytes = &bytes[..bytes.len().min(agent::ANSWER_LIMIT)];
        // The first byte picks the status (200 most of the time), the rest
        // is the body hyper hands over.
        let (status, body) = match bytes.split_first() {
            Some((&first, rest)) if first < 16 => (404, rest),
            Some((_, rest)) => (200, rest),
            None => (200, bytes),
        };
        let load = match agent::judge(status, body) {
            Err(error) => return says_something(&format!("{error:#}")),
            Ok(load) => load,
        };
        if !(load.is_finite() && load >= 0.0) {
            return Err(format!("accepted load {load}"));
        }
        let samples = [
            dynamic::Sample {
                configured: 100,
                current: 100,
                measure: load,
            },
            dynamic::Sample {
                configured: dynamic::MAX_WEIGHT,
                current: 1,
                measure: load,
            },
        ];
        if let Some(weights) = dynamic::resource(&samples) {
            for (weight, sample) in weights.iter().zip(&samples) {
                // Table units: `SCALE` per configured unit, at most ten
                // times the configured weight.
                let most = u64::from(sample.configured) * u64::from(dynamic::SCALE) * 10;
                if *weight == 0 || u64::from(*weight) > most {
                    return Err(format!("weight {weight} for load {load}"));
                }
            }
        }
        Ok(())
    });
}

const SYNC_TOKENS: &[&[u8]] = &[
    b"LBS1",
    b"\x01\x01\0\0",
    b"\x01\x03\0\0",
    b"\x01\x05\0\0",
    b"\0\x01",
    b"\x04\x06",
    b"\x06\x11",
    b"\0\0\0\0\0\0\0\0\0\0\xff\xff",
];

/// A connection-sync datagram: as sent by a peer holding the key (the
/// fuzzed bytes sealed with it, so the parser behind the tag is reached),
/// and as received from anyone (unsealed: refused at the tag). What parses
/// emits back to a datagram that parses to the same message.
#[test]
fn fuzz_sync_message() {
    let key = sync::wire::Key::new(b"fuzz");
    fuzz("sync", SYNC_TOKENS, 2_000, |bytes| {
        if let Ok(message) = sync::wire::parse(bytes, &key) {
            return Err(format!("an unsealed datagram was accepted: {message:?}"));
        }
        let sealed = sync::wire::seal(bytes.to_vec(), &key);
        match sync::wire::parse(&sealed, &key) {
            Err(error) => says_something(&error.to_string()),
            Ok(message) => {
                if message.entries.len() > sync::wire::MAX_ENTRIES {
                    return Err(format!("{} entries accepted", message.entries.len()));
                }
                let again = sync::wire::parse(&sync::wire::emit(&message, &key), &key);
                if again.as_ref() == Ok(&message) {
                    Ok(())
                } else {
                    Err(format!("{message:?} emitted and parsed again: {again:?}"))
                }
            }
        }
    });
}
