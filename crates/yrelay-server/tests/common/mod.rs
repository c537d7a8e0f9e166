//! Shared helpers for the server's integration tests: an in-process server on port 0 and a
//! small y-protocols client over tokio-tungstenite.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

pub mod puppet;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrelay_server::Config;

pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The separate metrics address, when `metrics_listen` was configured.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

/// Deletes directories that [`TestServer`]'s drop kept, once they are older than any test
/// runs (their servers are long gone).
fn prune_kept_dirs() {
    let Ok(entries) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(15 * 60));
        if old
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with("yrelay-test-")
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for TestServer {
    /// A server that was not stopped and awaited may still be flushing sled when the test's
    /// runtime shuts down (a blocking task drops the last store handle, and sled flushes on
    /// drop). Deleting its directory under it made that flush wait forever, hanging the test
    /// process. Such a directory is kept (under cargo's `target/tmp`); a stopped server's is
    /// deleted.
    fn drop(&mut self) {
        if self.task.as_ref().is_some_and(|t| !t.is_finished()) {
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        prune_kept_dirs();
        let dir = tempfile::Builder::new()
            .prefix("yrelay-test-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = yrelay_server::server::Server::prepare(listener, config).unwrap();
        let metrics_addr = server.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            metrics_addr,
            stop: Some(stop),
            task: Some(task),
            dir: Some(dir),
        }
    }

    pub fn url(&self, room: &str) -> String {
        format!("ws://{}/{}", self.addr, room)
    }

    /// Begins shutdown without waiting for it.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Begins shutdown and waits for `run` to return.
    pub async fn stop(&mut self) {
        self.begin_stop();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        }
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw y-protocols client.
pub struct Client {
    pub ws: Ws,
}

/// A decoded server message, enough for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    SyncStep1(Vec<u8>),
    SyncStep2(Vec<u8>),
    Update(Vec<u8>),
    Awareness(Vec<u8>),
    Other(Vec<u8>),
}

fn read_var(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Decodes a server frame, asserting it holds exactly one message.
pub fn decode(frame: &[u8]) -> Msg {
    let mut pos = 0;
    let t = read_var(frame, &mut pos);
    let payload = |pos: &mut usize| {
        let len = read_var(frame, pos) as usize;
        let out = frame[*pos..*pos + len].to_vec();
        *pos += len;
        assert_eq!(*pos, frame.len(), "frame holds more than one message");
        out
    };
    match t {
        0 => match read_var(frame, &mut pos) {
            0 => Msg::SyncStep1(payload(&mut pos)),
            1 => Msg::SyncStep2(payload(&mut pos)),
            2 => Msg::Update(payload(&mut pos)),
            s => panic!("unknown sync subtype {s}"),
        },
        1 => Msg::Awareness(payload(&mut pos)),
        _ => Msg::Other(frame.to_vec()),
    }
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        Self { ws }
    }

    /// Connects and consumes the greeting (SyncStep1, then awareness if any).
    pub async fn join(url: &str) -> Self {
        let mut c = Self::connect(url).await;
        match c.recv().await {
            Msg::SyncStep1(_) => {}
            other => panic!("expected SyncStep1 first, got {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, frame: impl Into<Bytes>) {
        self.ws.send(Message::Binary(frame.into())).await.unwrap();
    }

    /// The next binary frame, skipping pings, pongs and keepalive (empty awareness) frames.
    pub async fn recv_frame(&mut self) -> Vec<u8> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("connection ended")
                .expect("read error");
            match msg {
                Message::Binary(b) if &b[..] == yrelay_doc::codec::KEEPALIVE_FRAME => continue,
                Message::Binary(b) => return b.to_vec(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    pub async fn recv(&mut self) -> Msg {
        decode(&self.recv_frame().await)
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("read error before close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Asserts nothing but keepalives arrive for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Binary(b))))
                    if &b[..] == yrelay_doc::codec::KEEPALIVE_FRAME => {}
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// A text update from a fresh doc with `client_id`.
pub fn text_update(client_id: u64, text: &str) -> Vec<u8> {
    use yrs::{Doc, Text, Transact};
    let doc = Doc::with_client_id(client_id);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

/// The text of root "t" after applying `updates` to a fresh doc.
pub fn text_after(updates: &[Vec<u8>]) -> String {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, Transact, Update};
    let doc = Doc::new();
    let t = doc.get_or_insert_text("t");
    for u in updates {
        doc.transact_mut()
            .apply_update(Update::decode_v1(u).unwrap())
            .unwrap();
    }
    let s = t.get_string(&yrs::Transact::transact(&doc));
    s
}

/// An awareness update for `client` with `state` (JSON) at `clock`.
pub fn awareness_update(client: u64, clock: u32, state: &str) -> Vec<u8> {
    use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
    use yrs::updates::encoder::Encode;
    let mut clients = std::collections::HashMap::new();
    clients.insert(
        yrs::ClientID::new(client),
        AwarenessUpdateEntry {
            clock,
            json: state.into(),
        },
    );
    AwarenessUpdate { clients }.encode_v1()
}

/// Decodes an awareness update into (client, clock, json) triples.
pub fn awareness_entries(update: &[u8]) -> Vec<(u64, u32, String)> {
    use yrs::sync::awareness::AwarenessUpdate;
    use yrs::updates::decoder::Decode;
    let u = AwarenessUpdate::decode_v1(update).unwrap();
    let mut out: Vec<_> = u
        .clients
        .into_iter()
        .map(|(c, e)| (c.get(), e.clock, e.json.to_string()))
        .collect();
    out.sort();
    out
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`), enough for tests.
/// `headers` are `(name, value)` pairs added as given.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("timed out reading the HTTP response")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut rest = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        let mut body = Vec::new();
        let mut pos = 0;
        loop {
            let end = pos + rest[pos..].windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[pos..end]).unwrap().trim(), 16)
                    .unwrap();
            pos = end + 2;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&rest[pos..pos + size]);
            pos += size + 2;
        }
        rest = body;
    }
    HttpResponse {
        status,
        headers,
        body: rest,
    }
}

/// Writes straight to stderr, so the line shows even when libtest captures output.
pub fn say(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Finds an executable named `name` on PATH.
pub fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A test whose external program is missing prints a SKIPPED line and passes, unless
/// `YRELAY_REQUIRE_SERVICES=1` (set by `.ci/run`), where a missing service is a failure.
pub fn skip_or_fail(test: &str, reason: &str, install_hint: &str) {
    if std::env::var("YRELAY_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{test}: {reason}, and YRELAY_REQUIRE_SERVICES=1 forbids skipping ({install_hint})");
    }
    say(&format!("SKIPPED: {test}: {reason} ({install_hint})"));
}

/// Installs the suite's packages from the lockfile (`npm ci`) when they are missing or older
/// than the lockfile, so `cargo test --workspace` alone runs the whole suite.
pub fn ensure_compat_packages(compat_dir: &std::path::Path) -> Result<(), String> {
    ensure_npm_packages(compat_dir, "ci")
}

/// The same for `examples/web-editor`, with `npm install`: `npm ci` refuses its lockfile,
/// which npm 11 writes without the other platforms' optional rollup binaries (vite's); `npm
/// install` keeps to the locked versions and leaves the lockfile as it is.
pub fn ensure_web_editor_packages(dir: &std::path::Path) -> Result<(), String> {
    ensure_npm_packages(dir, "install")
}

/// Serializes installs: the tests of a file run in parallel threads.
static NPM_INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ensure_npm_packages(dir: &std::path::Path, subcommand: &str) -> Result<(), String> {
    let _one_at_a_time = NPM_INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let modules = dir.join("node_modules");
    let lock = dir.join("package-lock.json");
    let installed = modules.join(".package-lock.json");
    let mtime = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
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
        "installing npm packages: npm {subcommand} (in {})",
        dir.display()
    ));
    let status = std::process::Command::new(npm)
        .args([subcommand, "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`npm {subcommand}` failed with {status}"))
    }
}
