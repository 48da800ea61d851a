//! An interface's index, MAC address and primary address in the current
//! network namespace, for the controller (attach, next hops) and HA (VRRP,
//! gratuitous ARP) alike.

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
