//! Compatibility suite driven by the official Yjs npm libraries.
//!
//! Runs the `node:test` files in `tests/compat/` (y-websocket v3 and v2 clients,
//! y-protocols over a raw socket) against the `yrelay` binary built by cargo.
//!
//! Needs `node` (20 or newer) and `npm` on PATH; the suite's packages are installed
//! from the lockfile (`npm ci`) on first run. Without node/npm the test prints a
//! SKIPPED line and passes, unless `YRELAY_REQUIRE_SERVICES=1`, in which case it
//! fails.

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "run: npm ci --prefix crates/yrelay-server/tests/compat";

/// Overall deadline for the node suite; each node test also has its own timeout.
const DEFAULT_SUITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Writes straight to stderr, so the line shows even when libtest captures output.
fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Finds an executable named `name` on PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Major version of `node --version` (`v20.11.1` → 20).
fn node_major_version(node: &Path) -> Option<u32> {
    let out = Command::new(node).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .trim_start_matches('v')
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Skips (prints why) or, when services are required, fails.
fn skip_or_fail(reason: &str) {
    if std::env::var("YRELAY_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!(
            "compat_npm: {reason}, and YRELAY_REQUIRE_SERVICES=1 forbids skipping ({INSTALL_HINT})"
        );
    }
    say(&format!("SKIPPED: compat_npm: {reason} ({INSTALL_HINT})"));
}

/// Stops the whole process group of the node runner (its per-file workers and
/// the yrelay servers they started).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &format!("-{pid}")])
        .status();
}

/// Installs the suite's packages from the lockfile (`npm ci`) when they are missing or older
/// than the lockfile, so `cargo test --workspace` alone runs the whole suite.
fn ensure_packages(compat_dir: &Path) -> Result<(), String> {
    let modules = compat_dir.join("node_modules");
    let lock = compat_dir.join("package-lock.json");
    let installed = modules.join(".package-lock.json");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = match (mtime(&installed), mtime(&lock)) {
        (Some(installed), Some(lock)) => installed >= lock,
        _ => false,
    };
    if fresh {
        return Ok(());
    }
    let Some(npm) = find_on_path("npm") else {
        return Err(format!(
            "{} is missing and `npm` is not on PATH",
            modules.display()
        ));
    };
    say(&format!(
        "compat_npm: installing the suite's packages: npm ci (in {})",
        compat_dir.display()
    ));
    let status = Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(compat_dir)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`npm ci` failed with {status}"))
    }
}

#[test]
fn official_npm_clients_interoperate_with_yrelay() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compat_dir = manifest_dir.join("tests").join("compat");
    let yrelay_bin = env!("CARGO_BIN_EXE_yrelay");

    let Some(node) = find_on_path("node") else {
        skip_or_fail("`node` not found on PATH");
        return;
    };
    match node_major_version(&node) {
        Some(major) if major >= 20 => {}
        other => {
            skip_or_fail(&format!(
                "{} is version {other:?}, the suite needs Node 20 or newer",
                node.display()
            ));
            return;
        }
    }
    if let Err(reason) = ensure_packages(&compat_dir) {
        skip_or_fail(&reason);
        return;
    }

    let mut test_files: Vec<String> = std::fs::read_dir(&compat_dir)
        .expect("read tests/compat")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.js"))
        .collect();
    test_files.sort();
    assert!(
        !test_files.is_empty(),
        "no *.test.js files in {}",
        compat_dir.display()
    );

    let timeout = std::env::var("YRELAY_COMPAT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_SUITE_TIMEOUT);

    say(&format!(
        "compat_npm: {} --test --test-reporter=spec --test-concurrency=1 {} (in {}, YRELAY_BIN={yrelay_bin})",
        node.display(),
        test_files.join(" "),
        compat_dir.display()
    ));
    let started = Instant::now();
    // Output is inherited: node's spec reporter streams straight to the terminal.
    let mut child = Command::new(&node)
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1"])
        .args(test_files.iter().map(OsStr::new))
        .current_dir(&compat_dir)
        .env("YRELAY_BIN", yrelay_bin)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("spawn node");

    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status;
        }
        if started.elapsed() > timeout {
            kill_group(child.id());
            let _ = child.wait();
            panic!(
                "compat_npm: the node suite did not finish within {} s and was killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    say(&format!(
        "compat_npm: node suite finished in {:.1} s with {status}",
        started.elapsed().as_secs_f64()
    ));
    assert!(
        status.success(),
        "the official-client compatibility suite failed ({status}); see the node test output above"
    );
}
