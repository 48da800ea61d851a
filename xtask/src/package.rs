//! `cargo xtask package`: a Debian package of lb, installed the way `HAProxy`
//! and keepalived are (`dpkg -i lb_VERSION_ARCH.deb`). It is laid out here
//! and built with `dpkg-deb`, which every Debian host has:
//!
//! ```text
//! /usr/sbin/lb                                   the binary (XDP object embedded)
//! /usr/lib/systemd/system/lb.service             deploy/lb.service, paths for /usr/sbin
//! /usr/share/doc/lb/examples/*.yaml              deploy/'s example configurations
//! /usr/share/doc/lb/{README,TROUBLESHOOTING,deploy}.md, copyright
//! /usr/share/man/man8/lb.8.gz, lb-COMMAND.8.gz   from the CLI (`lb manpage`, clap_mangen)
//! /usr/share/bash-completion/completions/lb      from the CLI (`lb completions`)
//! /usr/share/zsh/vendor-completions/_lb
//! /usr/share/fish/vendor_completions.d/lb.fish
//! ```
//!
//! No file under /etc: the operator writes /etc/lb/lb.yaml from an example,
//! so `dpkg -r` removes every file the package added. The maintainer scripts
//! only tell a running systemd about the unit (and stop it on removal); the
//! service is never enabled behind the operator's back.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{root, run, step};

/// Where the unit in deploy/ expects the binary, and where the package puts it.
const UNIT_BINARY: &str = "/usr/local/bin/lb";
const PACKAGE_BINARY: &str = "/usr/sbin/lb";

/// The example configurations shipped under /usr/share/doc/lb/examples.
const EXAMPLES: &[&str] = &[
    "lb.example.yaml",
    "lb.ha-a.yaml",
    "lb.ha-b.yaml",
    "lb.modes.yaml",
];

/// `postinst`: a running systemd learns about the (new) unit.
const POSTINST: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n\
\tsystemctl daemon-reload || true\n\
fi\n";

/// `prerm`: stop the service before its binary and unit go (a stop hands
/// an HA master's addresses over and detaches cleanly).
const PRERM: &str = "#!/bin/sh\nset -e\n\
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n\
\tsystemctl stop lb.service 2>/dev/null || true\n\
fi\n";

/// What `cargo xtask package` was asked for.
#[derive(Debug)]
pub struct Request {
    /// The `lb` binary to package (already built).
    pub binary: PathBuf,
    /// Where the `.deb` goes.
    pub output: PathBuf,
    /// Store the payload uncompressed (tests: a debug binary is large and
    /// compressing it costs more than the whole test).
    pub uncompressed: bool,
}

/// Lays the package out under `output` and builds it; returns the `.deb`.
pub fn build(request: &Request) -> anyhow::Result<PathBuf> {
    let lb = &request.binary;
    if !lb.is_file() {
        bail!("{} is missing", lb.display());
    }
    let version = version(lb)?;
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?;
    let name = format!("lb_{version}_{arch}");
    fs::create_dir_all(&request.output)
        .with_context(|| format!("creating {}", request.output.display()))?;
    let stage = request.output.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    step(&format!("laying out {}", stage.display()));

    files(lb, &stage)?;
    man_pages(lb, &stage)?;
    completions(lb, &stage)?;
    control(&stage, &version, &arch)?;

    let deb = request.output.join(format!("{name}.deb"));
    step(&format!("dpkg-deb --build {}", deb.display()));
    let compression = if request.uncompressed {
        "-Znone"
    } else {
        "-Zxz"
    };
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", compression, "--build"])
        .arg(&stage)
        .arg(&deb))?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    println!("    package: {}", deb.display());
    println!("    install: dpkg -i {}", deb.display());
    Ok(deb)
}

/// The binary, the unit (with the package's path to the binary), the
/// examples and the documentation.
fn files(lb: &Path, stage: &Path) -> anyhow::Result<()> {
    install(lb, &stage.join("usr/sbin/lb"), 0o755)?;
    let unit = read(&root().join("deploy/lb.service"))?.replace(UNIT_BINARY, PACKAGE_BINARY);
    write(
        &stage.join("usr/lib/systemd/system/lb.service"),
        &unit,
        0o644,
    )?;

    let doc = stage.join("usr/share/doc/lb");
    for example in EXAMPLES {
        install(
            &root().join("deploy").join(example),
            &doc.join("examples").join(example),
            0o644,
        )?;
    }
    install(&root().join("README.md"), &doc.join("README.md"), 0o644)?;
    install(
        &root().join("deploy/README.md"),
        &doc.join("deploy.md"),
        0o644,
    )?;
    install(
        &root().join("deploy/TROUBLESHOOTING.md"),
        &doc.join("TROUBLESHOOTING.md"),
        0o644,
    )?;
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: lb\n\nFiles: *\nLicense: MIT OR Apache-2.0\n",
        0o644,
    )?;
    Ok(())
}

/// `lb.8` and `lb-COMMAND.8`, gzipped, from `lb manpage`.
fn man_pages(lb: &Path, stage: &Path) -> anyhow::Result<()> {
    let man = stage.join("usr/share/man/man8");
    fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    for command in std::iter::once(None).chain(commands(lb)?.into_iter().map(Some)) {
        let mut args = vec!["manpage"];
        args.extend(command.as_deref());
        let page = capture_bytes(Command::new(lb).args(&args))?;
        let file = match &command {
            None => "lb.8".to_owned(),
            Some(name) => format!("lb-{name}.8"),
        };
        fs::write(man.join(&file), page)?;
        // -n: no name or time stamp in the header, so rebuilds are identical.
        run(Command::new("gzip")
            .args(["-9", "-n", "-f"])
            .arg(man.join(&file)))?;
    }
    Ok(())
}

/// Completion scripts where bash, zsh and fish look for them.
fn completions(lb: &Path, stage: &Path) -> anyhow::Result<()> {
    let share = stage.join("usr/share");
    for (shell, path) in [
        ("bash", "bash-completion/completions/lb"),
        ("zsh", "zsh/vendor-completions/_lb"),
        ("fish", "fish/vendor_completions.d/lb.fish"),
    ] {
        let script = capture(Command::new(lb).args(["completions", shell]))?;
        write(&share.join(path), &script, 0o644)?;
    }
    Ok(())
}

/// `DEBIAN/`: the control file and the maintainer scripts.
fn control(stage: &Path, version: &str, arch: &str) -> anyhow::Result<()> {
    let debian = stage.join("DEBIAN");
    write(&debian.join("postinst"), POSTINST, 0o755)?;
    write(&debian.join("prerm"), PRERM, 0o755)?;
    let installed_kib = disk_usage_kib(stage)?;
    write(
        &debian.join("control"),
        &format!(
            "Package: lb\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: lb developers <lb@example.invalid>\n\
             Installed-Size: {installed_kib}\n\
             Section: net\n\
             Priority: optional\n\
             Recommends: iproute2\n\
             Suggests: bird2\n\
             Homepage: https://example.invalid/lb\n\
             Description: XDP layer-4 load balancer with health checks and VRRP failover\n \
             lb balances TCP and UDP services over backends in the kernel's XDP\n \
             layer (NAT, direct server return or IPIP tunnels), takes failed\n \
             backends out within a health-check interval, fails over to a standby\n \
             tier, sheds junk traffic, and moves floating IPs between two balancers\n \
             with VRRPv3 (keepalived-compatible).\n"
        ),
        0o644,
    )?;
    Ok(())
}

/// `lb --version` → `0.1.0`.
fn version(lb: &Path) -> anyhow::Result<String> {
    let text = capture(Command::new(lb).arg("--version"))?;
    text.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("no version in `lb --version`: {text}"))
}

/// The commands `lb --help` lists (each gets a man page), without `help`.
fn commands(lb: &Path) -> anyhow::Result<Vec<String>> {
    let help = capture(Command::new(lb).arg("--help"))?;
    let names: Vec<String> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        // A wrapped description continues with deeper indentation.
        .filter(|line| !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        bail!("no commands in `lb --help`:\n{help}");
    }
    Ok(names)
}

fn capture_bytes(command: &mut Command) -> anyhow::Result<Vec<u8>> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

fn capture(command: &mut Command) -> anyhow::Result<String> {
    let bytes = capture_bytes(command)?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `text` to `path` (creating its directories) with `mode`.
fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut text = text.to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Copies `from` to `to` (creating its directories) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

/// `du -sk`, for the control file's Installed-Size.
fn disk_usage_kib(dir: &Path) -> anyhow::Result<u64> {
    let text = capture(Command::new("du").arg("-sk").arg(dir))?;
    text.split_whitespace()
        .next()
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("du -sk: {text}"))
}
