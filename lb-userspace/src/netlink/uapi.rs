//! Constants from the kernel's uapi headers (`linux/netlink.h`,
//! `linux/rtnetlink.h`, `linux/neighbour.h`, `linux/if_link.h`), typed as
//! the wire fields that carry them.

pub const NLMSG_HDRLEN: usize = 16;
pub const NLA_HDRLEN: usize = 4;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
/// On a dump's messages: the dump was interrupted by a change and may
/// be inconsistent.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT | NLM_F_MATCH`: every entry.
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// On `NLMSG_ERROR`: only the request's header is echoed.
pub const NLM_F_CAPPED: u16 = 0x100;
/// On `NLMSG_ERROR`: extended-ack attributes follow the echo.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// Attribute types carry "nested" and "byte order" bits on top.
pub const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_DELNEIGH: u16 = 29;
pub const RTM_GETNEIGH: u16 = 30;

pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const RTA_PREFSRC: u16 = 7;
pub const RTA_METRICS: u16 = 8;
pub const RTA_MULTIPATH: u16 = 9;
pub const RTA_TABLE: u16 = 15;
pub const RTA_VIA: u16 = 18;
pub const RTAX_MTU: u16 = 2;

pub const RT_TABLE_MAIN: u32 = 254;
/// `rtm_flags`: a cached clone or exception, not a FIB entry.
pub const RTM_F_CLONED: u32 = 0x200;

pub const RTN_UNICAST: u8 = 1;
pub const RTN_LOCAL: u8 = 2;
pub const RTN_BLACKHOLE: u8 = 6;
pub const RTN_UNREACHABLE: u8 = 7;
pub const RTN_PROHIBIT: u8 = 8;

pub const RTMGRP_LINK: u32 = 0x1;
pub const RTMGRP_NEIGH: u32 = 0x4;
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;
pub const RTMGRP_IPV4_ROUTE: u32 = 0x40;
pub const RTMGRP_IPV6_IFADDR: u32 = 0x100;
pub const RTMGRP_IPV6_ROUTE: u32 = 0x400;

pub const NDA_DST: u16 = 1;
pub const NDA_LLADDR: u16 = 2;
pub const NDA_FLAGS_EXT: u16 = 15;
pub const NTF_EXT_LEARNED: u8 = 0x10;
pub const NTF_EXT_MANAGED: u32 = 0x1;

pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const IFA_FLAGS: u16 = 8;
/// In `ifa_flags` (a byte): skip duplicate address detection.
pub const IFA_F_NODAD: u8 = 0x02;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_TENTATIVE: u32 = 0x40;
pub const RT_SCOPE_LINK: u8 = 253;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_MTU: u16 = 4;
pub const IFF_UP: u32 = 0x1;
pub const IFF_RUNNING: u32 = 0x40;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
