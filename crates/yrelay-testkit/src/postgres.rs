//! [`PrivatePostgres`]: a PostgreSQL server of its own for one test (or one test binary).
//!
//! It runs the installed binaries (`initdb`, `postgres`, `createdb`) — on Debian they live in
//! `/usr/lib/postgresql/<version>/bin`, not on PATH; the highest version is taken — on a
//! fresh cluster in a temporary directory:
//!
//! ```text
//!  <tmp>/yrelay-pg-XXXXXX/
//!      data/          the cluster (initdb: superuser `postgres`, trust auth, UTF8, locale C)
//!      sock/          the server's unix socket directory (so it never touches /run/postgresql)
//!      server.log     everything the server printed, across restarts
//! ```
//!
//! The server listens on 127.0.0.1 only, on a free port, with fsync on (the default: tests
//! of durability mean it) and small shared buffers. `initdb` and `postgres` refuse to run as
//! root; as root (CI, this machine) they run as the `postgres` system user through `setpriv`
//! (which `exec`s, so the pid we hold is the server's own), with the directory handed to that
//! user.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{self, Reaper, STOP_TIMEOUT};
use crate::TlsFiles;

/// How to get the binaries, for the SKIPPED line.
const HINT: &str = "install PostgreSQL: apt-get install postgresql";
/// User the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";
/// Overrides where the binaries are looked for (a directory with `initdb` and `postgres`).
const BIN_ENV: &str = "YRELAY_PG_BIN";
/// How long the server may take to accept connections (2 shared cores, busy compiling).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// What the server logs once it accepts connections.
const READY_LINE: &str = "database system is ready to accept connections";
/// What the server logs when its port is taken (then a new port is tried).
const PORT_TAKEN: &str = "Address already in use";
/// Attempts with a new port when the chosen one was taken in between.
const PORT_ATTEMPTS: usize = 5;

/// A running private PostgreSQL server. Dropping it stops the server (fast shutdown) and
/// removes its directory.
///
/// ```no_run
/// let Some(pg) = yrelay_testkit::PrivatePostgres::start("my_test") else {
///     return; // SKIPPED was printed (or the test panicked under YRELAY_REQUIRE_SERVICES=1)
/// };
/// let url = pg.create_database("case1"); // postgres://postgres@127.0.0.1:PORT/case1
/// ```
#[derive(Debug)]
pub struct PrivatePostgres {
    /// Name of the test, for messages.
    test: String,
    /// Directory holding `initdb`, `postgres` and (usually) `createdb`.
    bin: PathBuf,
    /// The temporary directory (see the module docs); removed when dropped, after the
    /// server was stopped.
    root: tempfile::TempDir,
    port: u16,
    /// `Some(user)` when running as root: the server and `initdb` run as that user.
    run_as: Option<&'static str>,
    /// The postmaster, while running.
    server: Option<Child>,
    /// Cleans up if this process dies without dropping `self` (see [`Reaper`]).
    reaper: Option<Reaper>,
    /// Whether the server has `ssl=on` and refuses connections without TLS.
    tls: bool,
}

impl PrivatePostgres {
    /// Creates a cluster and starts its server for `test`, waiting until it accepts
    /// connections. Returns `None` after [`crate::skip_or_fail`] when PostgreSQL is not
    /// installed (or, as root, there is no `postgres` user or no `setpriv` to become it).
    ///
    /// # Panics
    ///
    /// If `initdb` fails or the server does not accept connections within a minute (the
    /// message includes the end of the server log), or under `YRELAY_REQUIRE_SERVICES=1`
    /// when something is missing.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    /// [`Self::start`], but the server has `ssl=on` with the certificate and key in `tls`,
    /// and its `pg_hba.conf` refuses TCP connections that do not use TLS (`hostnossl ...
    /// reject`): a client that got in provably spoke TLS.
    pub fn start_tls(test: &str, tls: &TlsFiles) -> Option<Self> {
        Self::start_with(test, Some(tls))
    }

    fn start_with(test: &str, tls: Option<&TlsFiles>) -> Option<Self> {
        let Some(bin) = find_bin_dir() else {
            crate::skip_or_fail(
                test,
                "PostgreSQL binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin, $YRELAY_PG_BIN or PATH",
                HINT,
            );
            return None;
        };
        let run_as = if process::running_as_root() {
            if !process::user_exists(SERVER_USER) {
                crate::skip_or_fail(
                    test,
                    "running as root, and there is no `postgres` user to run PostgreSQL as",
                    HINT,
                );
                return None;
            }
            if process::find_on_path("setpriv").is_none() {
                crate::skip_or_fail(
                    test,
                    "running as root, and `setpriv` (util-linux) is missing to run PostgreSQL as `postgres`",
                    "apt-get install util-linux",
                );
                return None;
            }
            Some(SERVER_USER)
        } else {
            None
        };
        let root = tempfile::Builder::new()
            .prefix("yrelay-pg-")
            .tempdir()
            .unwrap_or_else(|e| panic!("{test}: cannot create a temporary directory: {e}"));
        let mut pg = Self {
            test: test.to_owned(),
            bin,
            root,
            port: 0,
            run_as,
            server: None,
            reaper: None,
            tls: tls.is_some(),
        };
        pg.init_cluster();
        if let Some(tls) = tls {
            pg.install_tls(tls);
        }
        for attempt in 1..=PORT_ATTEMPTS {
            pg.port = crate::free_port();
            match pg.spawn_server() {
                Ok(()) => return Some(pg),
                Err(log) if log.contains(PORT_TAKEN) && attempt < PORT_ATTEMPTS => continue,
                Err(log) => pg.fail("did not start", &log),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// URL of the `postgres` database as the superuser `postgres` (trust auth, no password).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// URL of database `name` on this server (which [`Self::create_database`] made).
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The server's TCP port on 127.0.0.1 (the same across [`Self::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running (not [`Self::stop`]ped or [`Self::kill`]ed).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Creates database `name` (a plain identifier: letters, digits, `_`) and returns its
    /// URL. Cheaper than a server per test: one server per test binary, a database per case.
    ///
    /// # Panics
    ///
    /// If `createdb` fails (the message includes its output).
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?}: use letters, digits and _"
        );
        let createdb = self.bin.join("createdb");
        let program = if process::is_executable(&createdb) {
            createdb
        } else {
            PathBuf::from("createdb")
        };
        // A client: runs as whoever we are, connecting over TCP as `postgres` (trust auth).
        let output = Command::new(&program)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(name)
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: cannot run {}: {e}", self.test, program.display()));
        if !output.status.success() {
            self.fail(
                &format!("createdb {name} failed"),
                &String::from_utf8_lossy(&output.stderr),
            );
        }
        self.url_of(name)
    }

    /// Stops the server with a *fast* shutdown (SIGINT: open transactions are rolled back,
    /// clients disconnected, a shutdown checkpoint written) and waits for it to exit. The
    /// data stays; [`Self::start_again`] brings the server back. Does nothing if it is not
    /// running.
    pub fn stop(&mut self) {
        self.halt("INT");
    }

    /// Stops the server with an *immediate* shutdown (SIGQUIT: every server process exits
    /// at once, no checkpoint), as a crash looks to the data: the next start runs WAL
    /// recovery. Does nothing if it is not running.
    pub fn kill(&mut self) {
        self.halt("QUIT");
    }

    /// Starts the server again on the same data directory and port, after [`Self::stop`] or
    /// [`Self::kill`], and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// If it is running, or does not come back within a minute.
    pub fn start_again(&mut self) {
        assert!(
            self.server.is_none(),
            "{}: PostgreSQL is still running",
            self.test
        );
        if let Err(log) = self.spawn_server() {
            self.fail("did not start again", &log);
        }
    }

    /// The last `lines` lines of the server log (for a test's own failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        process::tail(&self.log_path(), lines)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.root.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("server.log")
    }

    /// A command running `program` as the server user (via `setpriv`, which execs it).
    fn command(&self, program: &Path) -> Command {
        let mut command = match self.run_as {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                    .arg(program);
                c
            }
            None => Command::new(program),
        };
        // The server user may not be allowed into the test's working directory.
        command.current_dir(self.root.path()).stdin(Stdio::null());
        command
    }

    /// `initdb` into `data/`, after handing the directory to the server user.
    fn init_cluster(&self) {
        if let Err(e) = std::fs::create_dir(self.socket_dir()) {
            panic!("{}: cannot create the socket directory: {e}", self.test);
        }
        if let Some(user) = self.run_as {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(self.root.path())
                .status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                panic!(
                    "{}: cannot hand {} to the `{user}` user ({status:?})",
                    self.test,
                    self.root.path().display()
                );
            }
        }
        let output = self
            .command(&self.bin.join("initdb"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            // The cluster is thrown away with the test: no need to fsync its creation. The
            // server itself runs with fsync on.
            .arg("--no-sync")
            .output()
            .unwrap_or_else(|e| panic!("{}: cannot run initdb: {e}", self.test));
        if !output.status.success() {
            self.fail(
                "initdb failed",
                &format!(
                    "{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            );
        }
    }

    /// Copies the certificate and key into the data directory (the server insists on a key
    /// only its own user can read) and allows TCP connections only over TLS.
    fn install_tls(&self, tls: &TlsFiles) {
        let data = self.data_dir();
        let copy = |from: &Path, to: &str| {
            if let Err(e) = std::fs::copy(from, data.join(to)) {
                panic!("{}: cannot copy {}: {e}", self.test, from.display());
            }
        };
        copy(&tls.cert, "server.crt");
        copy(&tls.key, "server.key");
        let hba = "local all all trust\n\
                   hostssl all all 127.0.0.1/32 trust\n\
                   hostnossl all all 127.0.0.1/32 reject\n";
        if let Err(e) = std::fs::write(data.join("pg_hba.conf"), hba) {
            panic!("{}: cannot write pg_hba.conf: {e}", self.test);
        }
        let mut ok = Command::new("chmod")
            .arg("600")
            .arg(data.join("server.key"))
            .status()
            .is_ok_and(|s| s.success());
        if let Some(user) = self.run_as {
            ok &= Command::new("chown")
                .arg(format!("{user}:"))
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .arg(data.join("pg_hba.conf"))
                .status()
                .is_ok_and(|s| s.success());
        }
        assert!(ok, "{}: cannot hand the TLS files to the server", self.test);
    }

    /// Starts the postmaster on `self.port` and waits for it to accept connections; on
    /// failure returns what it logged meanwhile (after making sure it is gone).
    fn spawn_server(&mut self) -> Result<(), String> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("{}: cannot open {}: {e}", self.test, log_path.display()));
        let offset = log.seek(SeekFrom::End(0)).unwrap_or(0);
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: cannot share the log file: {e}", self.test));
        let mut command = self.command(&self.bin.join("postgres"));
        if self.tls {
            // Relative paths are taken from the data directory.
            command.args(["-c", "ssl=on", "-c", "ssl_cert_file=server.crt"]);
            command.args(["-c", "ssl_key_file=server.key"]);
        }
        let mut server = command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.socket_dir())
            .args([
                "-c",
                "shared_buffers=16MB",
                "-c",
                "fsync=on",
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|e| panic!("{}: cannot start postgres: {e}", self.test));
        self.reaper = Reaper::start(server.id(), "INT", self.root.path()).ok();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let logged = read_from(&log_path, offset);
            if logged.contains(READY_LINE) {
                self.server = Some(server);
                return Ok(());
            }
            let exited = matches!(server.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                process::stop_child(&mut server, "QUIT", STOP_TIMEOUT);
                self.reaper = None;
                let why = if exited {
                    "the server exited"
                } else {
                    "timed out waiting for it to accept connections"
                };
                return Err(format!("{why}; log:\n{}", read_from(&log_path, offset)));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Signals the server to shut down and waits for it (SIGKILL after 30 s).
    fn halt(&mut self, signal: &str) {
        if let Some(mut server) = self.server.take() {
            if !process::stop_child(&mut server, signal, STOP_TIMEOUT) {
                crate::say(&format!(
                    "{}: PostgreSQL did not stop within {STOP_TIMEOUT:?} and was killed",
                    self.test
                ));
            }
        }
        self.reaper = None;
    }

    fn fail(&self, what: &str, detail: &str) -> ! {
        panic!(
            "{}: private PostgreSQL (port {}, {}): {what}:\n{detail}\n--- server log tail ---\n{}",
            self.test,
            self.port,
            self.root.path().display(),
            self.log_tail(30)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.halt("INT");
        // `root` (the TempDir) is removed after this, with the server gone.
    }
}

/// Everything written to `path` after byte `offset`.
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

/// The directory with `initdb` and `postgres`: `$YRELAY_PG_BIN`, else the highest version in
/// `/usr/lib/postgresql/*/bin`, else wherever PATH has them.
fn find_bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        process::is_executable(&dir.join("initdb")) && process::is_executable(&dir.join("postgres"))
    };
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return complete(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            complete(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let initdb = process::find_on_path("initdb")?;
    let dir = initdb.parent()?.to_owned();
    complete(&dir).then_some(dir)
}
