//! `load`: R rooms × C clients editing a shared Y.Text (and optionally sending presence), with
//! end-to-end latency per delivered edit and a convergence check at the end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Interval, MissedTickBehavior};

use crate::client::{Client, Clocks, Ended, SendLog};
use crate::stats::{micros, Percentiles};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// URL with `{room}` where the room name goes; several, comma-separated, for a cluster:
    /// writers connect to the first, observers to the others in turn.
    pub url: String,
    /// Rooms.
    pub rooms: usize,
    /// Clients per room.
    pub clients: usize,
    /// Of those, how many edit (the rest only observe).
    pub writers: usize,
    /// Edits per second per writer (0: none).
    pub rate: f64,
    /// Awareness updates per second per client (0: none).
    pub awareness_rate: f64,
    /// Length of the editing window.
    pub duration: Duration,
    /// Run the y-websocket sync handshake (off for a server that does not speak it).
    pub sync: bool,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Give up on connecting after this long.
    pub connect_timeout: Duration,
    /// After the window, wait at most this long for edits still in flight.
    pub drain_timeout: Duration,
    /// Room names are `<prefix>-<n>`.
    pub room_prefix: String,
}

/// The result, as printed (one JSON line).
#[derive(Debug, Serialize)]
pub struct LoadReport {
    /// Always `load`.
    pub mode: &'static str,
    /// The URL template.
    pub url: String,
    /// Rooms.
    pub rooms: usize,
    /// Clients per room.
    pub clients_per_room: usize,
    /// Writers per room.
    pub writers_per_room: usize,
    /// Edits per second per writer.
    pub edit_rate_hz: f64,
    /// Awareness updates per second per client.
    pub awareness_rate_hz: f64,
    /// Seconds of editing.
    pub duration_s: f64,
    /// Clients that connected (and synced, when the handshake is on).
    pub connected: usize,
    /// Clients that could not connect.
    pub connect_errors: usize,
    /// Time to connect and sync.
    pub connect_ms: Percentiles,
    /// Edits sent.
    pub edits_sent: u64,
    /// Edits × the other connected clients of their room.
    pub deliveries_expected: u64,
    /// Edits integrated by another client.
    pub deliveries: u64,
    /// Deliveries per second, over the time from the first edit to the last delivery.
    pub delivered_per_s: f64,
    /// From an edit's send to its integration by another client.
    pub latency_ms: Percentiles,
    /// Awareness updates sent.
    pub awareness_sent: u64,
    /// Awareness messages received.
    pub awareness_received: u64,
    /// Awareness messages received per second, over the window.
    pub awareness_received_per_s: f64,
    /// Bytes of binary frames received by all clients.
    pub bytes_received: u64,
    /// Connections the server closed or dropped during the run.
    pub closes: usize,
    /// Other failures (decode, apply, send).
    pub errors: usize,
    /// The first few closes and errors, for the reader.
    pub problems: Vec<String>,
    /// Rooms whose connected clients all ended with the same state and text.
    pub rooms_converged: usize,
    /// Every room converged, and every edit was delivered.
    pub converged: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Connect,
    Run,
    Drain,
    Finish,
}

struct Shared {
    spec: LoadSpec,
    phase: watch::Receiver<Phase>,
    connect_slots: Semaphore,
    settled: AtomicUsize,
    /// Connected clients that stopped editing (saw `Drain`, or ended).
    stopped: AtomicUsize,
    deliveries: AtomicU64,
    last_delivery_us: AtomicU64,
    run_start: std::sync::OnceLock<Instant>,
}

struct Room {
    /// One per URL template: writers use the first, observers the others in turn.
    urls: Vec<String>,
    log: SendLog,
    connected: AtomicUsize,
    edits: AtomicU64,
}

#[derive(Default)]
struct Outcome {
    room: usize,
    connect: Option<Duration>,
    latencies: Vec<u32>,
    edits: u64,
    awareness_sent: u64,
    awareness_received: u64,
    bytes_received: u64,
    ended: Option<Ended>,
    error: Option<String>,
    final_state: Option<(Clocks, String)>,
}

/// Runs the load and reports.
pub async fn run(spec: LoadSpec) -> LoadReport {
    let (phase_tx, phase) = watch::channel(Phase::Connect);
    let shared = Arc::new(Shared {
        connect_slots: Semaphore::new(spec.connect_concurrency.max(1)),
        spec: spec.clone(),
        phase,
        settled: AtomicUsize::new(0),
        stopped: AtomicUsize::new(0),
        deliveries: AtomicU64::new(0),
        last_delivery_us: AtomicU64::new(0),
        run_start: std::sync::OnceLock::new(),
    });
    let rooms: Vec<Arc<Room>> = (0..spec.rooms)
        .map(|r| {
            Arc::new(Room {
                urls: spec
                    .url
                    .split(',')
                    .map(|u| u.replace("{room}", &format!("{}-{r}", spec.room_prefix)))
                    .collect(),
                log: SendLog::default(),
                connected: AtomicUsize::new(0),
                edits: AtomicU64::new(0),
            })
        })
        .collect();
    let total = spec.rooms * spec.clients;
    let mut tasks = JoinSet::new();
    for (r, room) in rooms.iter().enumerate() {
        for c in 0..spec.clients {
            let writer = c < spec.writers;
            let seed = ((r * spec.clients + c) as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(1);
            let url = match room.urls.len() {
                1 => room.urls[0].clone(),
                _ if writer => room.urls[0].clone(),
                n => room.urls[1 + (c - spec.writers.min(c)) % (n - 1)].clone(),
            };
            tasks.spawn(client_task(
                Arc::clone(&shared),
                Arc::clone(room),
                url,
                r,
                writer,
                seed,
            ));
        }
    }

    // Everyone connects (or fails) before the window opens.
    let connect_deadline = Instant::now() + spec.connect_timeout + Duration::from_secs(5);
    while shared.settled.load(Ordering::Acquire) < total && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A moment for the last handshakes' awareness and sync traffic to pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let _ = shared.run_start.set(start);
    let _ = phase_tx.send(Phase::Run);
    tokio::time::sleep(spec.duration).await;
    let _ = phase_tx.send(Phase::Drain);

    // Wait for edits in flight, up to the drain limit.
    let expected = || -> u64 {
        rooms
            .iter()
            .map(|room| {
                let n = room.connected.load(Ordering::Acquire) as u64;
                room.edits.load(Ordering::Acquire) * n.saturating_sub(1)
            })
            .sum()
    };
    let drain_deadline = Instant::now() + spec.drain_timeout;
    // First every client stops editing (an edit in flight when the window closes still counts
    // and must be waited for), then the deliveries catch up.
    let connected = || {
        rooms
            .iter()
            .map(|r| r.connected.load(Ordering::Acquire))
            .sum::<usize>()
    };
    while shared.stopped.load(Ordering::Acquire) < connected() && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while shared.deliveries.load(Ordering::Acquire) < expected() && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = phase_tx.send(Phase::Finish);

    let mut outcomes = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => outcomes.push(Outcome {
                error: Some(format!("client task failed: {e}")),
                ..Outcome::default()
            }),
        }
    }
    report(&spec, &shared, &rooms, outcomes, start, expected())
}

fn report(
    spec: &LoadSpec,
    shared: &Shared,
    rooms: &[Arc<Room>],
    outcomes: Vec<Outcome>,
    start: Instant,
    deliveries_expected: u64,
) -> LoadReport {
    let mut connect = Vec::new();
    let mut latencies = Vec::new();
    let mut problems = Vec::new();
    let (mut closes, mut errors, mut connect_errors) = (0, 0, 0);
    let (mut edits, mut aw_sent, mut aw_recv, mut bytes) = (0, 0, 0, 0);
    let mut finals: Vec<Vec<(Clocks, String)>> = vec![Vec::new(); rooms.len()];
    for o in outcomes {
        match o.connect {
            Some(d) => connect.push(micros(d)),
            None => connect_errors += 1,
        }
        latencies.extend(o.latencies);
        edits += o.edits;
        aw_sent += o.awareness_sent;
        aw_recv += o.awareness_received;
        bytes += o.bytes_received;
        match o.ended {
            Some(Ended::Closed(r)) => {
                closes += 1;
                problems.push(format!("room {}: closed: {r}", o.room));
            }
            Some(Ended::Failed(r)) => {
                errors += 1;
                problems.push(format!("room {}: read failed: {r}", o.room));
            }
            None => {}
        }
        if let Some(e) = o.error {
            errors += 1;
            problems.push(format!("room {}: {e}", o.room));
        }
        if let Some(state) = o.final_state {
            finals[o.room].push(state);
        }
    }
    for (r, states) in finals.iter().enumerate() {
        describe_divergence(r, states, &mut problems);
    }
    problems.sort();
    problems.dedup();
    problems.truncate(8);
    let rooms_converged = finals
        .iter()
        .zip(rooms)
        .filter(|(states, room)| {
            states.len() == room.connected.load(Ordering::Acquire)
                && states.windows(2).all(|w| w[0] == w[1])
        })
        .count();
    let deliveries = shared.deliveries.load(Ordering::Acquire);
    let last = Duration::from_micros(shared.last_delivery_us.load(Ordering::Acquire));
    let span = last.max(spec.duration).as_secs_f64();
    let window = spec.duration.as_secs_f64();
    let _ = start;
    LoadReport {
        mode: "load",
        url: spec.url.clone(),
        rooms: spec.rooms,
        clients_per_room: spec.clients,
        writers_per_room: spec.writers,
        edit_rate_hz: spec.rate,
        awareness_rate_hz: spec.awareness_rate,
        duration_s: window,
        connected: connect.len(),
        connect_errors,
        connect_ms: Percentiles::from_micros(connect),
        edits_sent: edits,
        deliveries_expected,
        deliveries,
        delivered_per_s: deliveries as f64 / span,
        latency_ms: Percentiles::from_micros(latencies),
        awareness_sent: aw_sent,
        awareness_received: aw_recv,
        awareness_received_per_s: aw_recv as f64 / window,
        bytes_received: bytes,
        closes,
        errors,
        problems,
        rooms_converged,
        converged: rooms_converged == rooms.len()
            && deliveries == deliveries_expected
            && closes == 0
            && errors == 0
            && connect_errors == 0,
    }
}

/// Says, for a room whose clients ended in different states, how far each lagging client is
/// behind the most advanced state for each author.
fn describe_divergence(room: usize, states: &[(Clocks, String)], problems: &mut Vec<String>) {
    if states.windows(2).all(|w| w[0] == w[1]) {
        return;
    }
    let mut top = std::collections::BTreeMap::<u64, u32>::new();
    for (clocks, _) in states {
        for &(c, clock) in clocks {
            let t = top.entry(c).or_default();
            *t = (*t).max(clock);
        }
    }
    for (i, (clocks, text)) in states.iter().enumerate() {
        let have: std::collections::BTreeMap<u64, u32> = clocks.iter().copied().collect();
        let behind: Vec<String> = top
            .iter()
            .filter(|(c, &clock)| have.get(c).copied().unwrap_or(0) < clock)
            .map(|(c, &clock)| format!("{c}: {} < {clock}", have.get(c).copied().unwrap_or(0)))
            .collect();
        if behind.is_empty() && *text != states[0].1 {
            problems.push(format!(
                "room {room}: client #{i} has the same clocks but another text"
            ));
        } else if !behind.is_empty() {
            problems.push(format!(
                "room {room}: client #{i} diverged, behind on {}",
                behind.join(", ")
            ));
        }
    }
}

/// A ticker firing `hz` times per second, first after a per-client offset so writers do not
/// fire in lockstep; ticks missed under load are skipped, not bunched.
fn ticker(hz: f64, seed: u64) -> Option<Interval> {
    if hz <= 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / hz);
    let offset = period.mul_f64((seed % 1000) as f64 / 1000.0);
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Skip);
    Some(i)
}

async fn tick(i: &mut Option<Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn client_task(
    shared: Arc<Shared>,
    room: Arc<Room>,
    url: String,
    room_idx: usize,
    writer: bool,
    seed: u64,
) -> Outcome {
    let mut out = Outcome {
        room: room_idx,
        ..Outcome::default()
    };
    let spec = &shared.spec;
    let connected = {
        let _slot = shared.connect_slots.acquire().await;
        let t0 = Instant::now();
        let c = tokio::time::timeout(spec.connect_timeout, Client::connect(&url, spec.sync, seed))
            .await;
        match c {
            Ok(Ok(client)) => {
                out.connect = Some(t0.elapsed());
                Some(client)
            }
            Ok(Err(e)) => {
                out.error = Some(format!("connect: {e:#}"));
                None
            }
            Err(_) => {
                out.error = Some("connect: timed out".into());
                None
            }
        }
    };
    let Some(mut client) = connected else {
        shared.settled.fetch_add(1, Ordering::AcqRel);
        return out;
    };
    room.connected.fetch_add(1, Ordering::AcqRel);
    shared.settled.fetch_add(1, Ordering::AcqRel);

    let mut phase = shared.phase.clone();
    let mut edits: Option<Interval> = None;
    let mut presence: Option<Interval> = None;
    let mut counted = 0usize;
    let mut stopped = false;
    loop {
        tokio::select! {
            frame = client.next_binary() => match frame {
                Ok(frame) => {
                    if let Err(e) = client.on_frame(&frame, Some(&room.log)).await {
                        out.error = Some(format!("{e:#}"));
                        break;
                    }
                }
                Err(ended) => {
                    out.ended = Some(ended);
                    break;
                }
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    break;
                }
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Run => {
                        if writer {
                            edits = ticker(spec.rate, seed);
                        }
                        presence = ticker(spec.awareness_rate, seed / 7);
                    }
                    Phase::Drain => {
                        edits = None;
                        presence = None;
                        if !stopped {
                            stopped = true;
                            shared.stopped.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    Phase::Finish => break,
                    Phase::Connect => {}
                }
            }
            () = tick(&mut edits) => {
                if let Err(e) = client.edit(&room.log).await {
                    out.error = Some(format!("{e:#}"));
                    break;
                }
                out.edits += 1;
                room.edits.fetch_add(1, Ordering::AcqRel);
            }
            () = tick(&mut presence) => {
                if let Err(e) = client.awareness().await {
                    out.error = Some(format!("{e:#}"));
                    break;
                }
                out.awareness_sent += 1;
            }
        }
        // Deliveries are published as they happen so the coordinator can stop draining early.
        if client.latencies.len() > counted {
            let new = client.latencies.len() - counted;
            counted = client.latencies.len();
            shared.deliveries.fetch_add(new as u64, Ordering::AcqRel);
            if let Some(start) = shared.run_start.get() {
                let since = start.elapsed().as_micros() as u64;
                shared.last_delivery_us.fetch_max(since, Ordering::AcqRel);
            }
        }
    }
    if !stopped {
        shared.stopped.fetch_add(1, Ordering::AcqRel);
    }
    if out.ended.is_none() && out.error.is_none() {
        out.final_state = Some((client.clocks(), client.text()));
    }
    out.awareness_received = client.awareness_received;
    out.bytes_received = client.bytes_received;
    out.latencies = std::mem::take(&mut client.latencies);
    client.close(Duration::from_secs(1)).await;
    out
}
