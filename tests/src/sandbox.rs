//! The kernel-enforced part of `deploy/lb.service`'s sandbox, applied to a
//! process without systemd: tests run `lb run` under it to show the unit's
//! restrictions leave lb working (CI has no systemd as PID 1, so the unit
//! itself cannot be started).
//!
//! [`Sandbox::from_unit`] reads the unit's directives; [`Sandbox::command`]
//! starts a program the way systemd would start `ExecStart`, between `fork`
//! and `exec`:
//!
//! - into the test's network namespace (`setns`, as `nsenter --net`);
//! - `CapabilityBoundingSet=`: every other capability dropped from the
//!   bounding set, so uid 0 execs with exactly that set (as `setpriv
//!   --bounding-set` does);
//! - `LimitRTPRIO=`, `UMask=`: `setrlimit` (where the test may raise the
//!   limit: [`Sandbox::rtprio_applies`]), `umask`;
//! - `NoNewPrivileges=yes`: `PR_SET_NO_NEW_PRIVS`;
//! - a seccomp filter, the rules systemd installs for
//!   `RestrictAddressFamilies=` (`socket()` of another family fails with
//!   `EAFNOSUPPORT`), `RestrictNamespaces=yes` (`unshare`, `clone` with a
//!   namespace flag and `setns` fail with `EPERM`, `clone3` with `ENOSYS`
//!   so that libc falls back to `clone`), `SystemCallArchitectures=native`
//!   (x86-64 only, no x32 calls), `ProtectClock=`, `ProtectKernelModules=`,
//!   `ProtectKernelLogs=`, `ProtectHostname=` (their system calls fail),
//!   `LockPersonality=` (`personality` only to query or keep `PER_LINUX`)
//!   and `RestrictSUIDSGID=` (`chmod` family with set-user/group-ID bits).
//!
//! The directives systemd enforces with mounts (`ProtectSystem=`,
//! `PrivateDevices=`, `ProtectProc=` ...) are not applied here:
//! [`Sandbox::unapplied`] lists them.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::Command,
};

/// x86-64's `AUDIT_ARCH_*` (`<linux/audit.h>`): `EM_X86_64 | 64-bit | LE`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// System calls of the x32 ABI carry this bit on x86-64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Capabilities by name, as `capabilities(7)` numbers them.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Address families by the names `RestrictAddressFamilies=` takes.
const FAMILIES: &[(&str, libc::c_int)] = &[
    ("AF_UNIX", libc::AF_UNIX),
    ("AF_INET", libc::AF_INET),
    ("AF_INET6", libc::AF_INET6),
    ("AF_NETLINK", libc::AF_NETLINK),
    ("AF_PACKET", libc::AF_PACKET),
];

/// Directives that deny system calls outright, and the calls.
const DENIED_CALLS: &[(&str, &[libc::c_long])] = &[
    (
        "ProtectClock",
        &[
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_clock_adjtime,
            libc::SYS_adjtimex,
        ],
    ),
    (
        "ProtectKernelModules",
        &[
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
        ],
    ),
    ("ProtectKernelLogs", &[libc::SYS_syslog]),
    (
        "ProtectHostname",
        &[libc::SYS_sethostname, libc::SYS_setdomainname],
    ),
];

/// Directives systemd enforces with mounts or its own bookkeeping, which
/// [`Sandbox::command`] does not apply.
const UNAPPLIED: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateMounts",
    "ProtectProc",
    "ProtectControlGroups",
    "ReadWritePaths",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "RuntimeDirectoryPreserve",
    "AmbientCapabilities",
    "LimitMEMLOCK",
];

/// The sandbox `deploy/lb.service` describes.
#[derive(Debug, Clone)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "one per yes/no directive of the unit"
)]
pub struct Sandbox {
    /// Capability numbers kept in the bounding set.
    pub capabilities: Vec<u32>,
    /// Address families `socket()` may create.
    pub families: Vec<libc::c_int>,
    /// `RestrictNamespaces=yes`.
    pub no_namespaces: bool,
    /// `SystemCallArchitectures=native`.
    pub native_only: bool,
    /// `LockPersonality=yes`.
    pub lock_personality: bool,
    /// `RestrictSUIDSGID=yes`.
    pub no_suid_sgid: bool,
    /// System calls denied by the `Protect*=` directives.
    pub denied: Vec<libc::c_long>,
    /// `LimitRTPRIO=`.
    pub rtprio: Option<u64>,
    /// `UMask=`.
    pub umask: Option<libc::mode_t>,
    /// Every directive of `[Service]` that was read, for the test's report.
    pub applied: Vec<String>,
}

/// `name=value` lines of a unit's `[Service]` section.
fn service_directives(unit: &str) -> Vec<(String, String)> {
    let mut section = "";
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]"
            && let Some((key, value)) = line.split_once('=')
        {
            out.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

fn yes(value: &str) -> bool {
    matches!(value, "yes" | "true" | "on" | "1")
}

impl Sandbox {
    /// Reads the sandbox from a unit file's text; panics on a value this
    /// module cannot apply (say which table to extend).
    pub fn from_unit(unit: &str) -> Self {
        let mut sandbox = Self {
            capabilities: Vec::new(),
            families: Vec::new(),
            no_namespaces: false,
            native_only: false,
            lock_personality: false,
            no_suid_sgid: false,
            denied: Vec::new(),
            rtprio: None,
            umask: None,
            applied: Vec::new(),
        };
        let mut capabilities_seen = false;
        for (key, value) in service_directives(unit) {
            let applied = match key.as_str() {
                "CapabilityBoundingSet" => {
                    capabilities_seen = true;
                    for name in value.split_whitespace() {
                        let number = CAPABILITIES
                            .iter()
                            .position(|c| *c == name)
                            .unwrap_or_else(|| panic!("unknown capability {name}"));
                        sandbox.capabilities.push(u32::try_from(number).unwrap());
                    }
                    true
                }
                "RestrictAddressFamilies" => {
                    assert!(
                        !value.starts_with('~'),
                        "a deny list in RestrictAddressFamilies: not supported here"
                    );
                    for name in value.split_whitespace() {
                        let family = FAMILIES
                            .iter()
                            .find(|(n, _)| *n == name)
                            .unwrap_or_else(|| {
                                panic!("add {name} to FAMILIES in tests/src/sandbox.rs")
                            })
                            .1;
                        sandbox.families.push(family);
                    }
                    true
                }
                "RestrictNamespaces" => {
                    assert!(
                        yes(&value),
                        "RestrictNamespaces={value}: only `yes` is applied"
                    );
                    sandbox.no_namespaces = true;
                    true
                }
                "SystemCallArchitectures" => {
                    assert_eq!(value, "native", "SystemCallArchitectures");
                    sandbox.native_only = true;
                    true
                }
                "LockPersonality" => {
                    sandbox.lock_personality = yes(&value);
                    true
                }
                "RestrictSUIDSGID" => {
                    sandbox.no_suid_sgid = yes(&value);
                    true
                }
                // Set in any case: a filter needs it without CAP_SYS_ADMIN.
                "NoNewPrivileges" => {
                    assert!(yes(&value), "NoNewPrivileges={value}: the filter sets it");
                    true
                }
                "LimitRTPRIO" => {
                    sandbox.rtprio = Some(value.parse().expect("LimitRTPRIO= a number"));
                    true
                }
                "UMask" => {
                    sandbox.umask =
                        Some(libc::mode_t::from_str_radix(&value, 8).expect("UMask= octal"));
                    true
                }
                other => {
                    if let Some((_, calls)) = DENIED_CALLS.iter().find(|(n, _)| *n == other) {
                        if yes(&value) {
                            sandbox.denied.extend_from_slice(calls);
                        }
                        true
                    } else {
                        false
                    }
                }
            };
            if applied {
                sandbox.applied.push(format!("{key}={value}"));
            }
        }
        assert!(capabilities_seen, "the unit has no CapabilityBoundingSet");
        sandbox
    }

    /// The unit's `[Service]` directives that restrict the process and
    /// are not applied here (enforced by systemd through mounts).
    pub fn unapplied(unit: &str) -> Vec<String> {
        service_directives(unit)
            .into_iter()
            .filter(|(key, _)| UNAPPLIED.contains(&key.as_str()))
            .map(|(key, value)| format!("{key}={value}"))
            .collect()
    }

    /// The seccomp program: classic BPF over `struct seccomp_data`
    /// (`nr` at 0, `arch` at 4, `args[i]` at 16 + 8 i; the low 32 bits of
    /// an argument, which hold every flag checked here, at its offset on
    /// little-endian x86-64).
    pub fn filter(&self) -> Vec<libc::sock_filter> {
        let mut program = Program::default();
        if self.native_only {
            program.load(4);
            program.jump(libc::BPF_JEQ, AUDIT_ARCH_X86_64, 1, 0);
            program.ret(errno(libc::EPERM));
            program.load(0);
            program.jump(libc::BPF_JGE, X32_SYSCALL_BIT, 0, 1);
            program.ret(errno(libc::EPERM));
        }
        for &call in &self.denied {
            program.deny(call, errno(libc::EPERM));
        }
        if self.no_namespaces {
            #[allow(clippy::cast_sign_loss, reason = "flag bits, all below 2^32")]
            let flags = (libc::CLONE_NEWNS
                | libc::CLONE_NEWCGROUP
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUSER
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWTIME) as u32;
            program.deny(libc::SYS_setns, errno(libc::EPERM));
            // clone3 passes its flags in memory a filter cannot read:
            // ENOSYS makes libc fall back to clone, as under systemd.
            program.deny(libc::SYS_clone3, errno(libc::ENOSYS));
            for call in [libc::SYS_unshare, libc::SYS_clone] {
                program.deny_flags(call, 0, flags, errno(libc::EPERM));
            }
        }
        if self.no_suid_sgid {
            let bits = libc::S_ISUID | libc::S_ISGID;
            program.deny_flags(libc::SYS_chmod, 1, bits, errno(libc::EPERM));
            program.deny_flags(libc::SYS_fchmod, 1, bits, errno(libc::EPERM));
            program.deny_flags(libc::SYS_fchmodat, 2, bits, errno(libc::EPERM));
        }
        if self.lock_personality {
            // personality(0xffffffff) queries; PER_LINUX (0) keeps it.
            program.only_values(
                libc::SYS_personality,
                0,
                &[0, 0xffff_ffff],
                errno(libc::EPERM),
            );
        }
        if !self.families.is_empty() {
            let families: Vec<u32> = self
                .families
                .iter()
                .map(|&f| u32::try_from(f).unwrap())
                .collect();
            program.only_values(libc::SYS_socket, 0, &families, errno(libc::EAFNOSUPPORT));
        }
        program.ret(libc::SECCOMP_RET_ALLOW);
        program.0
    }

    /// Whether [`Sandbox::command`] can apply `LimitRTPRIO=`: raising the
    /// hard limit needs `CAP_SYS_RESOURCE`, which systemd has but a test
    /// run inside a container may lack; then the limit is left as it is.
    pub fn rtprio_applies(&self) -> bool {
        let Some(wanted) = self.rtprio else {
            return false;
        };
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct it is given.
        let hard = if unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &raw mut current) } == 0 {
            current.rlim_max
        } else {
            0
        };
        let effective = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        let sys_resource = CAPABILITIES
            .iter()
            .position(|c| *c == "CAP_SYS_RESOURCE")
            .unwrap_or(24);
        hard >= wanted || effective & (1 << sys_resource) != 0
    }

    /// `program ARGS` in the network namespace at `netns` (`/run/netns/X`)
    /// under this sandbox. Everything is prepared before `fork`; the child
    /// only makes system calls before `exec`.
    pub fn command(&self, netns: &str, program: &str, args: &[&str]) -> Command {
        let namespace = File::open(netns).unwrap_or_else(|e| panic!("open {netns}: {e}"));
        let filter = self.filter();
        let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .expect("cap_last_cap")
            .trim()
            .parse()
            .expect("cap_last_cap is a number");
        let dropped: Vec<u32> = (0..=last_cap)
            .filter(|c| !self.capabilities.contains(c))
            .collect();
        let rtprio = self.rtprio.filter(|_| self.rtprio_applies());
        let umask = self.umask;
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes system calls on memory prepared before the fork (`filter`,
        // `dropped`, the namespace descriptor, all moved in), and allocates
        // nothing.
        unsafe {
            command.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return fail();
                }
                for &cap in &dropped {
                    if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                        return fail();
                    }
                }
                if let Some(rtprio) = rtprio {
                    let limit = libc::rlimit {
                        rlim_cur: rtprio,
                        rlim_max: rtprio,
                    };
                    if libc::setrlimit(libc::RLIMIT_RTPRIO, &raw const limit) != 0 {
                        return fail();
                    }
                }
                if let Some(mask) = umask {
                    libc::umask(mask);
                }
                // Installing a filter without CAP_SYS_ADMIN needs it (and
                // the unit sets NoNewPrivileges=yes).
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return fail();
                }
                let fprog = libc::sock_fprog {
                    len: u16::try_from(filter.len()).unwrap_or(u16::MAX),
                    filter: filter.as_ptr().cast_mut(),
                };
                if libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &raw const fprog,
                ) != 0
                {
                    return fail();
                }
                Ok(())
            });
        }
        command
    }
}

/// `SECCOMP_RET_ERRNO` with `errno`.
fn errno(errno: libc::c_int) -> u32 {
    libc::SECCOMP_RET_ERRNO | (u32::try_from(errno).unwrap() & libc::SECCOMP_RET_DATA)
}

/// A classic BPF program under construction.
#[derive(Default)]
struct Program(Vec<libc::sock_filter>);

impl Program {
    fn push(&mut self, code: u32, jt: u8, jf: u8, k: u32) {
        self.0.push(libc::sock_filter {
            code: u16::try_from(code).unwrap(),
            jt,
            jf,
            k,
        });
    }

    /// `A = seccomp_data[offset]` (32 bits).
    fn load(&mut self, offset: u32) {
        self.push(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, offset);
    }

    fn jump(&mut self, op: u32, k: u32, jt: u8, jf: u8) {
        self.push(libc::BPF_JMP | op | libc::BPF_K, jt, jf, k);
    }

    fn ret(&mut self, action: u32) {
        self.push(libc::BPF_RET | libc::BPF_K, 0, 0, action);
    }

    fn is_call(&mut self, call: libc::c_long, skip: u8) {
        self.load(0);
        self.jump(libc::BPF_JEQ, u32::try_from(call).unwrap(), 0, skip);
    }

    /// `call` → `action`.
    fn deny(&mut self, call: libc::c_long, action: u32) {
        self.is_call(call, 1);
        self.ret(action);
    }

    /// `call` with any of `flags` in argument `arg` → `action`.
    fn deny_flags(&mut self, call: libc::c_long, arg: u32, flags: u32, action: u32) {
        self.is_call(call, 4);
        self.load(16 + 8 * arg);
        self.jump(libc::BPF_JSET, flags, 0, 1);
        self.ret(action);
        self.ret(libc::SECCOMP_RET_ALLOW);
    }

    /// `call` with argument `arg` other than `values` → `action`.
    fn only_values(&mut self, call: libc::c_long, arg: u32, values: &[u32], action: u32) {
        let n = u8::try_from(values.len()).expect("few values");
        self.is_call(call, n + 3);
        self.load(16 + 8 * arg);
        for (i, &value) in values.iter().enumerate() {
            // Equal: jump over the rest and the deny, to the allow.
            let i = u8::try_from(i).unwrap();
            self.jump(libc::BPF_JEQ, value, n - i, 0);
        }
        self.ret(action);
        self.ret(libc::SECCOMP_RET_ALLOW);
    }
}
