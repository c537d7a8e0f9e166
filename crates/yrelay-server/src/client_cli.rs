//! The client subcommands of the `yrelay` binary: `doc`, `token`, `rooms`, `versions`.
//! Built on `yrelay-client`; see docs/client.md for the reference.
//!
//! Output goes to stdout (the text, JSON or token asked for, nothing else); an error is one
//! line on stderr, `error: <reason>`, and exit status 1 (printed by `main`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use yrelay_client::{Client, ClientConfig, Endpoint, Event, Replica, RestClient};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, Transact, Update};

/// The Y.Text root read and written when `--root` is not given (what the README's browser
/// example uses).
const DEFAULT_ROOT: &str = "content";

/// Where a command finds the server.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server: ws://, wss://, http:// or https:// HOST:PORT (the same port serves the
    /// WebSocket and the REST API).
    #[arg(long, env = "YRELAY_SERVER")]
    server: Option<String>,
    /// A token for the room (JWT), as minted by `yrelay token mint`.
    #[arg(long, env = "YRELAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust this CA certificate (PEM) too, for a server with a private certificate.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

/// `yrelay doc ...`.
#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Print the text of a Y.Text root, from the server or from a local replica.
    Get(DocRead),
    /// Print the whole document as JSON, from the server or from a local replica.
    Json(DocRead),
    /// Append TEXT to a Y.Text root: live on the server (acknowledged once durable), into a
    /// local replica with no network (--replica DIR --offline), or into a replica and then
    /// synced (--replica DIR --server URL).
    Append(DocWrite),
    /// Replace the content of a Y.Text root by TEXT (same targets as `append`).
    Replace(DocWrite),
    /// Exchange a local replica's state with the server, both ways, by state vector: only
    /// what each side lacks is sent. Prints what moved.
    Sync(DocSync),
    /// Print the text of a Y.Text root now and again on every change, live over WebSocket.
    Watch(DocWatch),
}

/// Arguments of `doc get` and `doc json`.
#[derive(Debug, Args)]
pub struct DocRead {
    /// The room (document).
    #[arg(long)]
    room: String,
    /// The Y.Text root (`get` only).
    #[arg(long, default_value = DEFAULT_ROOT)]
    root: String,
    /// Read a local replica directory instead of the server (no network).
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    replica: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

/// Arguments of `doc append` and `doc replace`.
#[derive(Debug, Args)]
pub struct DocWrite {
    /// The room (document).
    #[arg(long)]
    room: String,
    /// The Y.Text root.
    #[arg(long, default_value = DEFAULT_ROOT)]
    root: String,
    /// A local replica directory (created if missing).
    #[arg(long, value_name = "DIR")]
    replica: Option<PathBuf>,
    /// Write into the replica only, without any network (needs --replica).
    #[arg(long, requires = "replica", conflicts_with = "server")]
    offline: bool,
    #[command(flatten)]
    server: ServerArgs,
    /// The text.
    text: String,
}

/// Arguments of `doc sync`.
#[derive(Debug, Args)]
pub struct DocSync {
    /// The room (document).
    #[arg(long)]
    room: String,
    /// The local replica directory (created if missing).
    #[arg(long, value_name = "DIR")]
    replica: PathBuf,
    #[command(flatten)]
    server: ServerArgs,
}

/// Arguments of `doc watch`.
#[derive(Debug, Args)]
pub struct DocWatch {
    /// The room (document).
    #[arg(long)]
    room: String,
    /// The Y.Text root.
    #[arg(long, default_value = DEFAULT_ROOT)]
    root: String,
    /// Exit after printing this many texts (the first one included); default: until killed.
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `yrelay token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a token for a room with the admin key; prints the token.
    Mint(TokenMint),
}

/// Arguments of `token mint`.
#[derive(Debug, Args)]
pub struct TokenMint {
    /// The room the token is for.
    #[arg(long)]
    room: String,
    /// owner, editor or viewer.
    #[arg(long, default_value = "editor")]
    role: String,
    /// Who the token names (its `sub`; shown in the audit trail).
    #[arg(long)]
    sub: String,
    /// Lifetime in seconds (the server caps it; default one hour).
    #[arg(long)]
    ttl: Option<u64>,
    #[command(flatten)]
    admin: AdminArgs,
}

/// The server and admin key of admin commands.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The server (ws://, wss://, http:// or https://).
    #[arg(long, env = "YRELAY_SERVER")]
    server: String,
    /// The server's admin key (`auth.admin_key`).
    #[arg(long, env = "YRELAY_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
    /// Trust this CA certificate (PEM) too.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

/// `yrelay rooms ...`.
#[derive(Debug, Subcommand)]
pub enum RoomsCommand {
    /// List every room (JSON: stored size, log length, last change, connections).
    List(AdminArgs),
}

/// `yrelay versions ...`.
#[derive(Debug, Subcommand)]
pub enum VersionsCommand {
    /// List a room's versions, newest first (JSON).
    List(VersionsRoom),
    /// Save a named version of the room's current state (editor role); prints it (JSON).
    Save(VersionsSave),
    /// Make the room equal to version ID, as a new edit (owner role).
    Restore(VersionsRestore),
}

/// A room on a server.
#[derive(Debug, Args)]
pub struct VersionsRoom {
    /// The room.
    #[arg(long)]
    room: String,
    #[command(flatten)]
    server: ServerArgs,
}

/// Arguments of `versions save`.
#[derive(Debug, Args)]
pub struct VersionsSave {
    /// A label for the version.
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    target: VersionsRoom,
}

/// Arguments of `versions restore`.
#[derive(Debug, Args)]
pub struct VersionsRestore {
    /// The version's id (from `versions list`).
    id: u64,
    #[command(flatten)]
    target: VersionsRoom,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

fn read_ca(path: Option<&Path>) -> anyhow::Result<Option<Vec<u8>>> {
    path.map(|p| std::fs::read(p).with_context(|| format!("cannot read --ca-cert {}", p.display())))
        .transpose()
}

impl ServerArgs {
    fn url(&self) -> anyhow::Result<&str> {
        self.server
            .as_deref()
            .context("no server: give --server URL (or YRELAY_SERVER)")
    }

    fn rest(&self) -> anyhow::Result<RestClient> {
        let endpoint = Endpoint::parse(self.url()?)?;
        let ca = read_ca(self.ca_cert.as_deref())?;
        Ok(RestClient::new(
            &endpoint,
            self.token.clone(),
            ca.as_deref(),
        )?)
    }
}

impl AdminArgs {
    fn rest(&self) -> anyhow::Result<RestClient> {
        let endpoint = Endpoint::parse(&self.server)?;
        let ca = read_ca(self.ca_cert.as_deref())?;
        Ok(RestClient::new(
            &endpoint,
            Some(self.admin_key.clone()),
            ca.as_deref(),
        )?)
    }
}

/// Loads a v1 update into a fresh `Doc`.
fn doc_from_update(update: &[u8]) -> anyhow::Result<Doc> {
    yrelay_doc::validate::validate_update_v1(update, &yrelay_doc::ValidateLimits::default())
        .context("the server sent an invalid update")?;
    let doc = Doc::new();
    let update = Update::decode_v1(update).context("the server sent an invalid update")?;
    doc.transact_mut()
        .apply_update(update)
        .context("cannot apply the server's state")?;
    Ok(doc)
}

/// The text of root `root`, refusing a root that exists with another type.
fn text_of(doc: &Doc, root: &str) -> anyhow::Result<String> {
    check_text_root(doc, root)?;
    let text = doc.get_or_insert_text(root);
    let txn = doc.transact();
    Ok(text.get_string(&txn))
}

fn check_text_root(doc: &Doc, root: &str) -> anyhow::Result<()> {
    let json = yrelay_doc::json::doc_to_json(doc);
    match json.get(root) {
        None | Some(serde_json::Value::String(_)) => Ok(()),
        Some(other) => {
            let kind = match other {
                serde_json::Value::Array(_) => "a Y.Array",
                serde_json::Value::Object(_) => "a Y.Map",
                _ => "not a Y.Text",
            };
            bail!("root {root:?} is {kind}, not a Y.Text")
        }
    }
}

/// Applies an append or replace to `doc`; returns exactly the update that edit made (v1).
fn edit_text(doc: &Doc, root: &str, text: &str, replace: bool) -> anyhow::Result<Vec<u8>> {
    check_text_root(doc, root)?;
    let ytext = doc.get_or_insert_text(root);
    let made: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = Arc::clone(&made);
    doc.observe_update_v1("yrelay-cli", move |_, event| {
        sink.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.update.clone());
    })
    .context("cannot observe the document")?;
    {
        let mut txn = doc.transact_mut();
        let len = ytext.len(&txn);
        if replace && len > 0 {
            ytext.remove_range(&mut txn, 0, len);
        }
        let at = if replace { 0 } else { ytext.len(&txn) };
        ytext.insert(&mut txn, at, text);
    }
    let _ = doc.unobserve_update_v1("yrelay-cli");
    let mut made = made.lock().unwrap_or_else(PoisonError::into_inner);
    match made.len() {
        1 => Ok(made.remove(0)),
        n => bail!("internal: the edit produced {n} updates"),
    }
}

/// `yrelay doc ...`.
pub fn doc(cmd: DocCommand) -> anyhow::Result<()> {
    match cmd {
        DocCommand::Get(args) => read(args, false),
        DocCommand::Json(args) => read(args, true),
        DocCommand::Append(args) => write(args, false),
        DocCommand::Replace(args) => write(args, true),
        DocCommand::Sync(args) => sync(args),
        DocCommand::Watch(args) => watch(args),
    }
}

fn read(args: DocRead, json: bool) -> anyhow::Result<()> {
    let doc = match &args.replica {
        Some(dir) => open_replica(dir)?.load(&args.room)?,
        None => {
            let rest = args.server.rest()?;
            let state = runtime()?.block_on(rest.state(&args.room, None))?;
            doc_from_update(&state)?
        }
    };
    if json {
        let value = yrelay_doc::json::doc_to_json(&doc);
        out(&format!("{}\n", serde_json::to_string_pretty(&value)?))
    } else {
        out(&format!("{}\n", text_of(&doc, &args.root)?))
    }
}

fn open_replica(dir: &Path) -> anyhow::Result<Replica> {
    Ok(Replica::open(dir)?)
}

fn write(args: DocWrite, replace: bool) -> anyhow::Result<()> {
    let verb = if replace { "replaced" } else { "appended" };
    match (&args.replica, args.server.server.is_some()) {
        (Some(dir), _) => {
            let replica = open_replica(dir)?;
            let doc = replica.load(&args.room)?;
            let update = edit_text(&doc, &args.root, &args.text, replace)?;
            replica.append(&args.room, &update, "cli")?;
            if args.offline || args.server.server.is_none() {
                let mut stderr = std::io::stderr().lock();
                let _ = writeln!(
                    stderr,
                    "{verb} into the replica {} (offline; `yrelay doc sync` sends it)",
                    dir.display()
                );
                return Ok(());
            }
            let rest = args.server.rest()?;
            let report =
                runtime()?.block_on(yrelay_client::sync_replica(&rest, &replica, &args.room))?;
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(
                stderr,
                "{verb} and synced: sent {} bytes, received {} bytes",
                report.sent_bytes, report.received_bytes
            );
            Ok(())
        }
        (None, true) => {
            let rest = args.server.rest()?;
            runtime()?.block_on(async {
                let state = rest.state(&args.room, None).await?;
                let doc = doc_from_update(&state)?;
                let update = edit_text(&doc, &args.root, &args.text, replace)?;
                rest.post_update(&args.room, &update).await?;
                anyhow::Ok(())
            })
        }
        (None, false) => bail!("nowhere to write: give --server URL, or --replica DIR --offline"),
    }
}

fn sync(args: DocSync) -> anyhow::Result<()> {
    let rest = args.server.rest()?;
    let replica = open_replica(&args.replica)?;
    let report = runtime()?.block_on(yrelay_client::sync_replica(&rest, &replica, &args.room))?;
    out(&format!(
        "synced {:?}: sent {} bytes, received {} bytes\n",
        args.room, report.sent_bytes, report.received_bytes
    ))
}

fn watch(args: DocWatch) -> anyhow::Result<()> {
    let url = args.server.url()?.to_owned();
    let mut config = ClientConfig::new(args.room.clone()).server(url);
    config.token = args.server.token.clone();
    config.extra_root_pem = read_ca(args.server.ca_cert.as_deref())?;
    runtime()?.block_on(async move {
        let client = Client::open(config).await?;
        let mut events = client.events();
        client.wait_synced(Duration::from_secs(30)).await?;
        let mut printed = 0u64;
        let mut last = None;
        loop {
            let text = text_of(client.doc(), &args.root)?;
            if last.as_ref() != Some(&text) {
                out(&format!("{text}\n"))?;
                printed += 1;
                last = Some(text);
                if args.count.is_some_and(|n| printed >= n) {
                    break;
                }
            }
            match events.recv().await {
                Ok(Event::Refused(why)) if client.status() == yrelay_client::Status::Offline => {
                    bail!("refused by the server: {why}")
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        client.close().await?;
        anyhow::Ok(())
    })
}

/// `yrelay token ...`.
pub fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint(args) => {
            let rest = args.admin.rest()?;
            let token = runtime()?
                .block_on(rest.mint_token(&args.room, &args.role, &args.sub, args.ttl))?;
            out(&format!("{token}\n"))
        }
    }
}

/// `yrelay rooms ...`.
pub fn rooms(cmd: RoomsCommand) -> anyhow::Result<()> {
    match cmd {
        RoomsCommand::List(args) => {
            let rest = args.rest()?;
            let rooms = runtime()?.block_on(rest.rooms())?;
            out(&format!("{}\n", serde_json::to_string_pretty(&rooms)?))
        }
    }
}

/// `yrelay versions ...`.
pub fn versions(cmd: VersionsCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    let value = match cmd {
        VersionsCommand::List(args) => {
            let rest = args.server.rest()?;
            rt.block_on(rest.versions(&args.room))?
        }
        VersionsCommand::Save(args) => {
            let rest = args.target.server.rest()?;
            rt.block_on(rest.save_version(&args.target.room, args.label.as_deref()))?
        }
        VersionsCommand::Restore(args) => {
            let rest = args.target.server.rest()?;
            rt.block_on(rest.restore_version(&args.target.room, args.id))?
        }
    };
    out(&format!("{}\n", serde_json::to_string_pretty(&value)?))
}
