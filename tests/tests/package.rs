//! The Debian package (`cargo xtask package`), checked by lintian and
//! installed on this machine the way an operator would: lintian reports no
//! error or warning; `dpkg -i` puts the binary (stripped), unit, examples,
//! man pages and completions in place, with every `deploy/` path and
//! example the documentation names; `lb check` passes on every installed
//! example configuration; the man pages open; `dpkg -r` removes every file
//! the package added, and `dpkg --purge` the package. The package is built
//! from the debug `lb` (gzip, not xz, to keep the test short) by the xtask
//! binary `cargo xtask` left in target/debug.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use lb_tests::lb_binary;

/// `xtask` next to the `lb` under test (`cargo xtask ...` builds it there).
fn xtask_binary() -> PathBuf {
    let xtask = lb_binary().with_file_name("xtask");
    assert!(
        xtask.is_file(),
        "{} is missing: run through `cargo xtask test`, or `cargo build -p xtask` first",
        xtask.display()
    );
    xtask
}

fn output(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn ok(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = output(program, args, env);
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether dpkg knows package `lb` as installed (or half-installed).
fn lb_installed() -> bool {
    let out = output("dpkg-query", &["-W", "-f=${Status}", "lb"], &[]);
    out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("not-installed")
}

/// Removes the package (if this test installed it) and the build directory,
/// also when an assertion failed half-way.
struct Installed {
    dir: PathBuf,
    installed: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.installed {
            let _ = output("dpkg", &["--purge", "lb"], &[]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_debian_package_installs_checks_and_removes_cleanly() {
    assert!(
        !lb_installed(),
        "a package named lb is already installed on this machine; this test would \
         replace and then remove it. `dpkg -r lb` first"
    );
    let dir = std::env::temp_dir().join(format!("lbt-package-{}", std::process::id()));
    let mut guard = Installed {
        dir: dir.clone(),
        installed: false,
    };
    ok(
        xtask_binary().to_str().unwrap(),
        &[
            "package",
            "--binary",
            lb_binary().to_str().unwrap(),
            "--output",
            dir.to_str().unwrap(),
            "--gzip",
        ],
        &[],
    );
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .expect("no .deb built");

    lintian_is_clean(&deb);
    let control = ok(
        "dpkg-deb",
        &["--field", deb.to_str().unwrap(), "Depends"],
        &[],
    );
    assert!(
        control.contains("libc6 (>=") && control.contains("libgcc-s1"),
        "Depends does not name the libraries lb links: {control}"
    );

    guard.installed = true;
    ok("dpkg", &["-i", deb.to_str().unwrap()], &[]);
    let files: Vec<PathBuf> = ok("dpkg", &["-L", "lb"], &[])
        .lines()
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .collect();
    for expected in [
        "/usr/sbin/lb",
        "/usr/lib/systemd/system/lb.service",
        "/usr/share/doc/lb/examples/lb.example.yaml",
        "/usr/share/doc/lb/examples/lb.ha-a.yaml",
        "/usr/share/man/man8/lb.8.gz",
        "/usr/share/man/man8/lb-run.8.gz",
        "/usr/share/bash-completion/completions/lb",
        "/usr/share/zsh/vendor-completions/_lb",
        "/usr/share/fish/vendor_completions.d/lb.fish",
        "/usr/share/doc/lb/copyright",
        "/usr/share/doc/lb/changelog.gz",
        "/usr/share/lintian/overrides/lb",
    ] {
        assert!(
            files.iter().any(|file| file == Path::new(expected)),
            "{expected} not installed; the package holds {files:?}"
        );
    }
    // The unit runs the installed binary.
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/lb.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/lb run -c /etc/lb/lb.yaml"),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");

    assert_stripped(Path::new("/usr/sbin/lb"));
    installs_every_documented_path(&files);
    examples_check(&files);

    man_pages_open();
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/lb").unwrap();
    assert!(
        bash.contains("complete") && bash.contains("drain"),
        "{bash}"
    );

    ok("dpkg", &["-r", "lb"], &[]);
    let left: Vec<&PathBuf> = files.iter().filter(|file| file.exists()).collect();
    assert!(left.is_empty(), "dpkg -r left {left:?}");
    // The postrm stays (config-files) until purge, which runs it.
    ok("dpkg", &["--purge", "lb"], &[]);
    guard.installed = false;
    assert!(!lb_installed(), "dpkg still lists lb after dpkg --purge");
    assert!(
        !Path::new("/var/lib/systemd/deb-systemd-helper-enabled/lb.service.dsh-also").exists(),
        "purge left deb-systemd-helper's record of lb.service"
    );
}

/// `lintian` on the package reports no error (`E:`) and no warning (`W:`).
/// (`cargo xtask package` already failed on any; this checks the `.deb`
/// it left, independently of how the xtask read lintian.)
fn lintian_is_clean(deb: &Path) {
    let out = output("lintian", &[deb.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("E: ") || line.starts_with("W: "))
        .collect();
    assert!(
        bad.is_empty() && out.status.success(),
        "lintian: {bad:?}\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ELF's section names: no symbol table and no debug sections.
fn assert_stripped(binary: &Path) {
    let elf = std::fs::read(binary).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    let u64_at = |at: usize| {
        usize::try_from(u64::from_le_bytes(elf[at..at + 8].try_into().unwrap())).unwrap()
    };
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not a 64-bit ELF");
    // ELF64 header: e_shoff at 0x28, e_shentsize 0x3a, e_shnum 0x3c,
    // e_shstrndx 0x3e; section header: sh_name at 0, sh_offset at 0x18.
    let (table, size, count) = (u64_at(0x28), usize::from(u16_at(0x3a)), u16_at(0x3c));
    let strings = u64_at(table + usize::from(u16_at(0x3e)) * size + 0x18);
    let names: Vec<String> = (0..usize::from(count))
        .map(|i| {
            let start = strings + u32_at(table + i * size) as usize;
            let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
            String::from_utf8_lossy(&elf[start..end]).into_owned()
        })
        .collect();
    assert!(names.iter().any(|n| n == ".text"), "{names:?}");
    let unstripped: Vec<&String> = names
        .iter()
        // `.debug_gdb_scripts` is rustc's loaded section naming gdb's
        // pretty-printers, not debug information: strip keeps it.
        .filter(|n| *n == ".symtab" || n.starts_with(".debug") || *n == ".comment")
        .filter(|n| *n != ".debug_gdb_scripts")
        .collect();
    assert!(
        unstripped.is_empty(),
        "{} is not stripped: {unstripped:?}",
        binary.display()
    );
}

/// The repository's root (tests/ is one level down).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `deploy/...` path and every `lb.NAME.yaml` example the user
/// documentation (README.md, deploy/*.md, docs/*.md) names, as paths
/// under deploy/ (`lb.aa-a.yaml`, `bird/`, `bird/balancer.conf`).
fn documented_deploy_paths() -> std::collections::BTreeSet<String> {
    let root = repo();
    let mut pages = vec![
        root.join("README.md"),
        root.join("deploy/README.md"),
        root.join("deploy/TROUBLESHOOTING.md"),
    ];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let word = |c: char| c.is_ascii_alphanumeric() || "_.-/*".contains(c);
    let mut found = std::collections::BTreeSet::new();
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for (at, _) in text.match_indices("deploy/") {
            if text[..at].ends_with(|c: char| word(c)) {
                continue; // a longer path that ends in deploy/
            }
            let rest: String = text[at + "deploy/".len()..]
                .chars()
                .take_while(|&c| word(c))
                .collect();
            let rest = rest.trim_end_matches(['.', '*']);
            if !rest.is_empty() {
                found.insert(rest.to_string());
            }
        }
        for (at, _) in text.match_indices(".yaml") {
            let start = text[..at]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'))
                .map_or(0, |i| i + 1);
            let name = &text[start..at + ".yaml".len()];
            if name.starts_with("lb.") && root.join("deploy").join(name).is_file() {
                found.insert(name.to_string());
            }
        }
    }
    println!("deploy paths the documentation names: {found:?}");
    assert!(found.contains("lb.example.yaml"), "{found:?}");
    found
}

/// Where the package installs `deploy/NAMED` (every file of it, for a
/// directory).
fn installed_as(named: &str) -> Vec<PathBuf> {
    let source = repo().join("deploy").join(named);
    assert!(
        source.exists(),
        "the documentation names deploy/{named}, which does not exist"
    );
    if source.is_dir() {
        return std::fs::read_dir(&source)
            .unwrap()
            .flat_map(|entry| {
                let name = entry.unwrap().file_name();
                installed_as(&format!(
                    "{}/{}",
                    named.trim_end_matches('/'),
                    name.to_str().unwrap()
                ))
            })
            .collect();
    }
    let doc = Path::new("/usr/share/doc/lb");
    let path = match named {
        "README.md" => doc.join("deploy.md"),
        "TROUBLESHOOTING.md" => doc.join("TROUBLESHOOTING.md"),
        "lb.service" => PathBuf::from("/usr/lib/systemd/system/lb.service"),
        "debian/copyright" => doc.join("copyright"),
        "debian/changelog" => doc.join("changelog.gz"),
        "debian/lintian-overrides" => PathBuf::from("/usr/share/lintian/overrides/lb"),
        // Maintainer scripts: dpkg keeps them under its own directory.
        script if script.starts_with("debian/") => PathBuf::from(format!(
            "/var/lib/dpkg/info/lb.{}",
            script.trim_start_matches("debian/")
        )),
        example => doc.join("examples").join(example),
    };
    vec![path]
}

/// Every `deploy/` path the documentation names is installed.
fn installs_every_documented_path(files: &[PathBuf]) {
    for named in documented_deploy_paths() {
        for path in installed_as(&named) {
            // Maintainer scripts are dpkg's, not in `dpkg -L`.
            let dpkgs = path.starts_with("/var/lib/dpkg/info") && path.is_file();
            assert!(
                files.contains(&path) || dpkgs,
                "the documentation names {named}, but the package does not install it \
                 (as {}); the package holds {files:?}",
                path.display()
            );
        }
    }
}

/// `lb check` passes on every installed example configuration.
fn examples_check(files: &[PathBuf]) {
    let examples: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.starts_with("/usr/share/doc/lb/examples"))
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
        .filter(|f| f.parent() == Some(Path::new("/usr/share/doc/lb/examples")))
        .collect();
    assert!(examples.len() >= 8, "{examples:?}");
    for example in examples {
        let path = example.to_str().unwrap();
        let out = output("/usr/sbin/lb", &["check", "-c", path], &[]);
        assert!(
            out.status.success(),
            "lb check -c {path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The man page opens, by file and by name, and describes the commands.
fn man_pages_open() {
    let by_file = ok(
        "man",
        &["-l", "/usr/share/man/man8/lb.8.gz"],
        &[("MANPAGER", "cat"), ("MANWIDTH", "100")],
    );
    assert!(by_file.contains("load balancer"), "{by_file}");
    for command in ["run", "check", "status", "drain"] {
        assert!(
            by_file.contains(&format!("lb-{command}(8)")) || by_file.contains(command),
            "lb(8) does not mention {command}: {by_file}"
        );
    }
    let by_name = ok(
        "man",
        &["8", "lb-run"],
        &[("MANPAGER", "cat"), ("MANWIDTH", "100")],
    );
    assert!(by_name.contains("lb run"), "{by_name}");
}
