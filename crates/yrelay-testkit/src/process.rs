//! Running the private servers: finding binaries, signalling and waiting for a process, the
//! reaper, and reading the tail of a log.
//!
//! Signals are sent with the `kill` program (procps): the workspace forbids `unsafe`, so no
//! `libc::kill`. Every process signalled here is one this crate started (by its pid).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to exit after a shutdown signal before it is killed.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Finds an executable named `name` on PATH.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is an executable file.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root (effective uid 0), read from `/proc/self/status`.
pub(crate) fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            // Real, effective, saved, filesystem: the effective one decides.
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Whether a system user `name` exists.
pub(crate) fn user_exists(name: &str) -> bool {
    Command::new("id")
        .args(["-u", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends `signal` (a name such as `INT` or `KILL`) to `pid`; false if it could not be sent
/// (the process is gone).
pub(crate) fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `timeout` for `child` to exit; true if it did (and was reaped).
pub(crate) fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Stops `child`: `signal` first, SIGKILL if it has not exited after `timeout`. Always reaps
/// it. Returns false if it had to be killed.
pub(crate) fn stop_child(child: &mut Child, signal_name: &str, timeout: Duration) -> bool {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return true;
    }
    signal(child.id(), signal_name);
    if wait_exit(child, timeout) {
        return true;
    }
    // Killing a child we started, by its pid; then reap it.
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// The last `lines` lines of the file at `path` (or a note that it cannot be read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A watchdog for one server process: a tiny shell loop, started next to the server, that
/// waits for *this* (the test) process to exit and then stops the server with `signal` and
/// removes `dir`. It covers what `Drop` cannot: a test binary that exits without dropping the
/// handle (a `static` server shared by a whole test binary, `process::exit`, an abort, a
/// harness killed on timeout). Normally the handle's `Drop` stops the server and then kills
/// the reaper first.
#[derive(Debug)]
pub(crate) struct Reaper(Child);

impl Reaper {
    /// Starts the reaper for the server `server_pid`.
    pub fn start(server_pid: u32, signal: &str, dir: &Path) -> std::io::Result<Self> {
        // $1 test pid, $2 server pid, $3 signal, $4 directory. The server counts as gone
        // when `kill -0` fails or it is a zombie (once the test process is gone it has no
        // parent that reaps it, and a container's pid 1 may not either).
        const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill "-$3" "$2" 2>/dev/null
alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
n=0
while alive "$2" && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n+1)); done
alive "$2" && kill -KILL "$2" 2>/dev/null
rm -rf -- "$4"
"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("yrelay-testkit-reaper")
            .arg(std::process::id().to_string())
            .arg(server_pid.to_string())
            .arg(signal)
            .arg(dir)
            // Detached from the test's output: a pipe reader (`cargo test | tee`) must not
            // wait for the reaper.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
