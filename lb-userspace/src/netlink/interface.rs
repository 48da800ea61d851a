//! An interface's index, MAC address and primary address in the current
//! network namespace, for the controller (attach, next hops) and HA (VRRP,
//! gratuitous ARP) alike, and whether it is up and holds an address (HA's
//! fault check).

use anyhow::Context as _;

use super::{Address, Family, Netlink};

/// The address VRRP speaks from on `name`: for IPv4 its first address (as
/// `ip -4 addr show` lists them: the primary ones first), for IPv6 its
/// link-local address (RFC 5798 §5.1.2.1), which may still be
/// [tentative](Address::tentative). `None` when it has none.
pub fn primary_address(name: &str, family: Family) -> anyhow::Result<Option<Address>> {
    let index = ifindex(name)?;
    let addresses = Netlink::open()?.addresses(index, family)?;
    Ok(addresses
        .into_iter()
        .find(|a| family == Family::V4 || a.link_local()))
}

/// The ifindex of `name` in this network namespace.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    let c_name = std::ffi::CString::new(name).context("interface name contains NUL")?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        anyhow::bail!("interface {name:?} does not exist");
    }
    Ok(index)
}

/// The interface's MAC address, asked of the kernel through a socket in the
/// current network namespace (sysfs would show the namespace that mounted it,
/// which differs under `nsenter --net`).
pub fn mac_address(name: &str) -> anyhow::Result<[u8; 6]> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        anyhow::bail!("interface name {name:?} is too long");
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    // SAFETY: plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a socket for SIOCGIFHWADDR");
    }
    // SAFETY: `request` is a valid ifreq with a NUL-terminated name, which
    // SIOCGIFHWADDR fills in; `fd` is an open socket.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &raw mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed exactly once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(error).with_context(|| format!("reading the MAC address of {name}"));
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the hwaddr member is the one set.
    let data = unsafe { request.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data.iter()) {
        *dst = src.cast_unsigned();
    }
    Ok(mac)
}

/// Whether `name` is up and has carrier (`IFF_UP` and `IFF_RUNNING`), as
/// HA's fault check asks it every 100 ms: one ioctl, no dump.
pub fn link_up(name: &str) -> anyhow::Result<bool> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        anyhow::bail!("interface name {name:?} is too long");
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src.cast_signed();
    }
    // SAFETY: plain socket(2) call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a socket for SIOCGIFFLAGS");
    }
    // SAFETY: `request` is a valid ifreq with a NUL-terminated name, which
    // SIOCGIFFLAGS fills in; `fd` is an open socket.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut request) };
    let error = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours and closed exactly once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(error).with_context(|| format!("reading the flags of {name}"));
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the flags member is the one set.
    let flags = i32::from(unsafe { request.ifr_ifru.ifru_flags });
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

/// Whether interface `name` holds `address` (in the calling thread's
/// network namespace); `false` when the addresses cannot be listed.
pub fn holds_address(name: &str, address: std::net::IpAddr) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return false;
    }
    let mut found = false;
    let mut cursor = list;
    while !cursor.is_null() && !found {
        // SAFETY: `cursor` is a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        if unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) }.to_bytes() != name.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of the family it states.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        let held = if family == libc::AF_INET {
            // SAFETY: an AF_INET address is a sockaddr_in (read unaligned:
            // a sockaddr is only 2-byte aligned).
            let sin = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in>().read_unaligned() };
            std::net::IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes())
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 address is a sockaddr_in6 (as above).
            let sin6 = unsafe { entry.ifa_addr.cast::<libc::sockaddr_in6>().read_unaligned() };
            std::net::IpAddr::from(sin6.sin6_addr.s6_addr)
        } else {
            continue;
        };
        found = held == address;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_up_and_holds_127_0_0_1() {
        assert!(link_up("lo").unwrap());
        assert!(holds_address("lo", "127.0.0.1".parse().unwrap()));
        assert!(!holds_address("lo", "192.0.2.1".parse().unwrap()));
        assert!(link_up("lb-no-such-if").is_err());
    }
}
