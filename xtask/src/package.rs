//! `cargo xtask package`: a Debian package of lb, installed the way `HAProxy`
//! and keepalived are (`dpkg -i lb_VERSION_ARCH.deb`). It is laid out here
//! and built with `dpkg-deb`, then checked with `lintian`, Debian's own
//! package checker: any error or warning fails the build.
//!
//! ```text
//! /usr/sbin/lb                                   the binary (XDP object embedded), stripped
//! /usr/lib/systemd/system/lb.service             deploy/lb.service, paths for /usr/sbin
//! /usr/share/doc/lb/examples/...                 deploy/'s examples: configurations,
//!                                                bird/, grafana/, prometheus/
//! /usr/share/doc/lb/{README,TROUBLESHOOTING,deploy}.md
//! /usr/share/doc/lb/copyright, changelog.gz      deploy/debian/
//! /usr/share/lintian/overrides/lb                deploy/debian/lintian-overrides
//! /usr/share/man/man8/lb.8.gz, lb-COMMAND.8.gz   from the CLI (`lb manpage`, clap_mangen)
//! /usr/share/bash-completion/completions/lb      from the CLI (`lb completions`)
//! /usr/share/zsh/vendor-completions/_lb
//! /usr/share/fish/vendor_completions.d/lb.fish
//! ```
//!
//! No file under /etc: the operator writes /etc/lb/lb.yaml from an example,
//! so `dpkg -r` removes every file the package added. The maintainer
//! scripts (deploy/debian/{postinst,prerm,postrm}) are the blocks
//! `dh_installsystemd --no-enable --no-stop-on-upgrade` writes: they tell
//! a running systemd about the unit, stop it on removal and never enable
//! or start it behind the operator's back.
//!
//! lb is a native package (version `0.1.0`, no Debian revision): its
//! changelog is therefore `changelog.gz`, as Debian policy §12.7 names it
//! for native packages, not `changelog.Debian.gz`.

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

/// Files of deploy/ that are not examples: they go elsewhere in the
/// package (the unit, the documentation) or make the package itself.
const NOT_EXAMPLES: &[&str] = &["README.md", "TROUBLESHOOTING.md", "lb.service", "debian"];

/// The maintainer scripts in deploy/debian.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// What `cargo xtask package` was asked for.
#[derive(Debug)]
pub struct Request {
    /// The `lb` binary to package (already built; stripped into the
    /// package).
    pub binary: PathBuf,
    /// Where the `.deb` goes.
    pub output: PathBuf,
    /// Compress the payload with gzip instead of xz (tests: xz costs ten
    /// seconds on a debug binary).
    pub gzip: bool,
}

/// Lays the package out under `output`, builds it and runs lintian on it;
/// returns the `.deb`.
pub fn build(request: &Request) -> anyhow::Result<PathBuf> {
    let lb = &request.binary;
    if !lb.is_file() {
        bail!("{} is missing", lb.display());
    }
    let version = version(lb)?;
    changelog_matches(&version)?;
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
    let depends = depends(&request.output, &stage.join("usr/sbin/lb"))?;
    control(&stage, &version, &arch, &depends)?;

    let deb = request.output.join(format!("{name}.deb"));
    step(&format!("dpkg-deb --build {}", deb.display()));
    let compression = if request.gzip { "-Zgzip" } else { "-Zxz" };
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", compression, "--build"])
        .arg(&stage)
        .arg(&deb))?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    println!("    package: {}", deb.display());
    lintian(&deb)?;
    println!("    install: dpkg -i {}", deb.display());
    Ok(deb)
}

/// Runs lintian on `deb`; any error or warning fails the build (lintian's
/// own verdict, `--fail-on error,warning`), the tags printed. What must
/// stay is overridden in deploy/debian/lintian-overrides, with its reason.
fn lintian(deb: &Path) -> anyhow::Result<()> {
    step(&format!("lintian {}", deb.display()));
    let output = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(deb)
        .output()
        .context("starting lintian (not installed? `cargo xtask setup` installs it)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    if !output.status.success() {
        bail!(
            "lintian found errors or warnings in {} ({}): fix them, or override one \
             that must stay in deploy/debian/lintian-overrides with a comment saying \
             why{}",
            deb.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .filter(|line| !line.contains("root privileges"))
                .fold(String::new(), |text, line| text + "\n" + line)
        );
    }
    println!("    lintian: no errors or warnings");
    Ok(())
}

/// The changelog's newest entry must be the version being packaged
/// (`lb (0.1.0) ...`): a release that forgot it fails here, not in
/// an operator's `apt changelog`.
fn changelog_matches(version: &str) -> anyhow::Result<()> {
    let path = root().join("deploy/debian/changelog");
    let changelog = read(&path)?;
    let first = changelog.lines().next().unwrap_or("");
    if !first.starts_with(&format!("lb ({version}) ")) {
        bail!(
            "{}: the newest entry is `{first}`, not lb {version}: add an entry for it",
            path.display()
        );
    }
    Ok(())
}

/// The `Depends` the binary needs: dpkg-shlibdeps maps its ELF `NEEDED`
/// libraries (`libc.so.6`, `libgcc_s.so.1`, ...) to the packages and minimum
/// versions that provide them (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`), as
/// `${shlibs:Depends}` does in a debhelper build. It wants a
/// `debian/control` and the binary under `debian/PACKAGE/`: both are laid
/// out in a scratch directory next to the stage.
fn depends(output: &Path, binary: &Path) -> anyhow::Result<String> {
    let scratch = output.join("shlibdeps");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    }
    write(
        &scratch.join("debian/control"),
        "Source: lb\n\nPackage: lb\nArchitecture: any\n",
        0o644,
    )?;
    let copy = scratch.join("debian/lb/usr/sbin/lb");
    install(binary, &copy, 0o755)?;
    let result = capture(
        Command::new("dpkg-shlibdeps")
            .args(["-O", "debian/lb/usr/sbin/lb"])
            .current_dir(&scratch),
    );
    fs::remove_dir_all(&scratch).with_context(|| format!("removing {}", scratch.display()))?;
    let line = result.context("dpkg-shlibdeps (package dpkg-dev; `cargo xtask setup`)")?;
    let depends = line
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("no shlibs:Depends in dpkg-shlibdeps' answer: {line}"))?;
    println!("    Depends: {depends}");
    Ok(depends.to_owned())
}

/// The binary (stripped), the unit (with the package's path to the
/// binary), the examples, the documentation, the copyright, changelog and
/// lintian overrides.
fn files(lb: &Path, stage: &Path) -> anyhow::Result<()> {
    let binary = stage.join("usr/sbin/lb");
    fs::create_dir_all(stage.join("usr/sbin"))?;
    // What dh_strip does to an executable: no symbols or debug sections,
    // nor the compiler's .comment and .note. The XDP object lb loads is
    // data in .rodata (`include_bytes_aligned!`), which strip keeps.
    run(Command::new("strip")
        .args(["--remove-section=.comment", "--remove-section=.note", "-o"])
        .arg(&binary)
        .arg(lb))?;
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", binary.display()))?;
    let unit = read(&root().join("deploy/lb.service"))?.replace(UNIT_BINARY, PACKAGE_BINARY);
    write(
        &stage.join("usr/lib/systemd/system/lb.service"),
        &unit,
        0o644,
    )?;

    let doc = stage.join("usr/share/doc/lb");
    for example in examples()? {
        install(
            &root().join("deploy").join(&example),
            &doc.join("examples").join(&example),
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
    let debian = root().join("deploy/debian");
    install(&debian.join("copyright"), &doc.join("copyright"), 0o644)?;
    install(&debian.join("changelog"), &doc.join("changelog"), 0o644)?;
    gzip(&doc.join("changelog"))?;
    install(
        &debian.join("lintian-overrides"),
        &stage.join("usr/share/lintian/overrides/lb"),
        0o644,
    )?;
    Ok(())
}

/// Every file under deploy/ but [`NOT_EXAMPLES`], as paths relative to
/// deploy/ (`lb.ha-a.yaml`, `bird/balancer.conf`, `grafana/lb.json`), sorted.
fn examples() -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, relative: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), &path, found)?;
            } else {
                found.push(path);
            }
        }
        Ok(())
    }
    let deploy = root().join("deploy");
    let mut found = Vec::new();
    for entry in fs::read_dir(&deploy).with_context(|| format!("reading {}", deploy.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if NOT_EXAMPLES.iter().any(|n| name == *n) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), Path::new(&name), &mut found)?;
        } else {
            found.push(PathBuf::from(name));
        }
    }
    found.sort();
    Ok(found)
}

/// `gzip -9n`: no name or time stamp in the header, so rebuilds are
/// identical.
fn gzip(file: &Path) -> anyhow::Result<()> {
    run(Command::new("gzip").args(["-9", "-n", "-f"]).arg(file))
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
        gzip(&man.join(&file))?;
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
fn control(stage: &Path, version: &str, arch: &str, depends: &str) -> anyhow::Result<()> {
    let debian = stage.join("DEBIAN");
    for script in SCRIPTS {
        install(
            &root().join("deploy/debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }
    md5sums(stage)?;
    let installed_kib = disk_usage_kib(stage)?;
    write(
        &debian.join("control"),
        &format!(
            "Package: lb\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: lb developers <lb@example.invalid>\n\
             Installed-Size: {installed_kib}\n\
             Depends: {depends}\n\
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

/// `DEBIAN/md5sums`, as `dh_md5sums` writes it: every file's digest, for
/// `dpkg --verify` / debsums.
fn md5sums(stage: &Path) -> anyhow::Result<()> {
    let sums = capture(
        Command::new("sh")
            .args([
                "-c",
                "find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum",
            ])
            .current_dir(stage),
    )?;
    write(&stage.join("DEBIAN/md5sums"), &sums, 0o644)
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
