//! The Prometheus recorder behind the `metrics` facade, and what `/metrics` renders.
//!
//! The recorder is process-wide: installed by the first server that starts (or never, if the
//! embedding program installed its own recorder first, in which case `/metrics` answers 503).
//! Every metric is listed in `docs/metrics.md`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets for latencies, in seconds (100 µs to 10 s).
const SECONDS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets for sizes, in bytes (1 KiB to 256 MiB).
const BYTES: &[f64] = &[
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
];
/// Buckets for counts of things per batch.
const COUNTS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Counters without labels, registered at zero when the recorder is installed, so a
/// dashboard or an alert sees `0` (and `rate()` works) before the first event instead of no
/// series at all. Labelled counters appear with their first event.
const UNLABELLED_COUNTERS: &[&str] = &[
    "yrelay_connections_opened_total",
    "yrelay_persisted_updates_total",
    "yrelay_persist_errors_total",
    "yrelay_compactions_total",
    "yrelay_room_load_errors_total",
    "yrelay_viewer_writes_refused_total",
    "yrelay_slow_consumer_disconnects_total",
    "yrelay_ping_timeouts_total",
    "yrelay_updates_refused_total",
    "yrelay_store_refusals_total",
];

/// Gauges registered at zero for the same reason.
const GAUGES: &[&str] = &[
    "yrelay_connections",
    "yrelay_rooms_loaded",
    "yrelay_persist_pending_bytes",
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process; `None` if another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES))
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("yrelay_persist_batch_updates".into()),
                        COUNTS,
                    )
                })
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            // Histograms keep a rolling window that must be pruned now and then.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("yrelay-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                });
            if spawned.is_err() {
                tracing::warn!("could not start the metrics upkeep thread");
            }
            metrics::gauge!("yrelay_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            describe();
            for name in UNLABELLED_COUNTERS {
                metrics::counter!(*name).increment(0);
            }
            for name in GAUGES {
                metrics::gauge!(*name).increment(0.0);
            }
            Some(handle)
        })
        .as_ref()
}

/// The Prometheus text exposition, if our recorder is installed.
pub fn render() -> Option<String> {
    install().map(PrometheusHandle::render)
}

/// HELP texts for the metrics that matter most to operators.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("yrelay_connections", "Open WebSocket connections.");
    describe_counter!(
        "yrelay_connections_opened_total",
        "WebSocket connections accepted."
    );
    describe_counter!(
        "yrelay_connections_closed_total",
        "WebSocket connections closed, by reason."
    );
    describe_gauge!("yrelay_rooms_loaded", "Rooms in memory.");
    describe_histogram!(
        "yrelay_update_apply_seconds",
        Unit::Seconds,
        "Time to apply one update to a room's document."
    );
    describe_histogram!(
        "yrelay_fanout_seconds",
        Unit::Seconds,
        "From an update's arrival to its frame queued for every connection of the room (includes the fsync hold)."
    );
    describe_histogram!(
        "yrelay_persist_write_seconds",
        Unit::Seconds,
        "One append + flush of a room's batch."
    );
    describe_histogram!(
        "yrelay_persist_batch_updates",
        "Updates written by one append + flush."
    );
    describe_counter!(
        "yrelay_auth_refusals_total",
        "Requests and upgrades refused by auth, by reason."
    );
    describe_counter!(
        "yrelay_limit_refusals_total",
        "Messages, requests and connections refused or throttled by a limit, by limit."
    );
    describe_gauge!("yrelay_ready", "1 when /readyz answers ready.");
    describe_gauge!("yrelay_build_info", "Always 1; the version is a label.");
}
