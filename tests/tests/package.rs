//! The Debian package (`cargo xtask package`), installed on this machine the
//! way an operator would: `dpkg -i` puts the binary, unit, examples, man
//! pages and completions in place; `lb check` passes on every installed
//! example configuration; the man pages open; `dpkg -r` removes every file
//! the package added. The package is built from the debug `lb` (uncompressed,
//! to keep the test short) by the xtask binary `cargo xtask` left in
//! target/debug.

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
            "--uncompressed",
        ],
        &[],
    );
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .expect("no .deb built");

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

    for example in [
        "lb.example.yaml",
        "lb.ha-a.yaml",
        "lb.ha-b.yaml",
        "lb.modes.yaml",
    ] {
        let path = format!("/usr/share/doc/lb/examples/{example}");
        let out = output("/usr/sbin/lb", &["check", "-c", &path], &[]);
        assert!(
            out.status.success(),
            "lb check -c {path}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    man_pages_open();
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/lb").unwrap();
    assert!(
        bash.contains("complete") && bash.contains("drain"),
        "{bash}"
    );

    ok("dpkg", &["-r", "lb"], &[]);
    guard.installed = false;
    let left: Vec<&PathBuf> = files.iter().filter(|file| file.exists()).collect();
    assert!(left.is_empty(), "dpkg -r left {left:?}");
    assert!(
        !lb_installed(),
        "dpkg still lists lb after dpkg -r (conffiles?)"
    );
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
