//! The PostgreSQL store against a real, private PostgreSQL server (from
//! `yrelay_testkit`): what the shared conformance cases cannot show — a server restart under
//! load, two store handles ("nodes") on one database, schema migrations applied once,
//! failing fast when the database is unreachable.
//!
//! Every test needs PostgreSQL: without it they print SKIPPED and pass, unless
//! `YRELAY_REQUIRE_SERVICES=1`.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use yrelay_store::{AppendEntry, PgOptions, PgStore, Store, StoreError};
use yrelay_testkit::PrivatePostgres;

fn entry(update: &[u8]) -> AppendEntry {
    AppendEntry {
        update: update.to_vec(),
        author: "t".into(),
        origin: "test".into(),
        time_ms: 1,
    }
}

/// Runs `sql` on `url` with the plain client, returning the first column of each row.
fn query_strings(url: &str, sql: &str) -> Vec<String> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

/// A server stopped and started again (same port and data): calls in between fail with
/// `Unavailable`, quickly; afterwards the same store handle works again without being
/// reopened, and nothing acknowledged was lost.
#[test]
fn recovers_after_a_restart_without_reopening() {
    let Some(mut pg) = PrivatePostgres::start("recovers_after_a_restart_without_reopening") else {
        return;
    };
    let url = pg.create_database("restart");
    let store = PgStore::open(&url).unwrap();
    assert_eq!(store.append("r", &[entry(b"1")]).unwrap(), vec![1]);
    store.check().unwrap();

    // Restarted while idle: the pooled connection is stale, and the first call after the
    // restart still succeeds (its BEGIN fails, it retries on a fresh connection).
    pg.stop();
    pg.start_again();
    assert_eq!(store.append("r", &[entry(b"2")]).unwrap(), vec![2]);

    // Down: every kind of call fails with Unavailable, fast (connection refused).
    pg.stop();
    let started = Instant::now();
    for result in [
        store.append("r", &[entry(b"x")]).map(|_| ()),
        store.load("r").map(|_| ()),
        store.check(),
        store.list_rooms().map(|_| ()),
        store.compact_with("r", &mut |_| Ok(Vec::new())).map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{result:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let message = store.check().unwrap_err().to_string();
    assert!(
        message.starts_with(
            "database unavailable: cannot connect to PostgreSQL: error connecting to server: "
        ) && message.contains("refused"),
        "{message}"
    );

    pg.start_again();
    store.check().unwrap();
    assert_eq!(store.append("r", &[entry(b"3")]).unwrap(), vec![3]);
    let loaded = store.load("r").unwrap();
    assert_eq!(
        loaded.tail,
        vec![(1, b"1".to_vec()), (2, b"2".to_vec()), (3, b"3".to_vec())]
    );
}

/// PostgreSQL restarted (fast shutdown, then an immediate one: a crash) while four threads
/// append and one compacts: every append that returned `Ok` is in the store afterwards,
/// seqs are distinct and the log is contiguous, and the threads go on by themselves.
#[test]
fn acknowledged_appends_survive_restarts_under_load() {
    let Some(mut pg) = PrivatePostgres::start("acknowledged_appends_survive_restarts_under_load")
    else {
        return;
    };
    let url = pg.create_database("load");
    let store = PgStore::open(&url).unwrap();
    let acked = Mutex::new(Vec::<(u64, Vec<u8>)>::new());
    let failures = AtomicU64::new(0);
    let running = AtomicBool::new(true);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (store, acked, failures, running) = (&store, &acked, &failures, &running);
            s.spawn(move || {
                let mut i = 0u32;
                while running.load(Ordering::SeqCst) {
                    let update = [&[t][..], &i.to_be_bytes()].concat();
                    match store.append("busy", &[entry(&update)]) {
                        Ok(seqs) => acked.lock().unwrap().push((seqs[0], update)),
                        Err(StoreError::Unavailable(_)) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                    i += 1;
                }
            });
        }
        s.spawn(|| {
            while running.load(Ordering::SeqCst) {
                // Keep the full history in the snapshot, so nothing is lost by folding.
                let _ = store.compact_with("busy", &mut |loaded| {
                    let mut all = loaded.snapshot.clone().unwrap_or_default();
                    for (seq, u) in &loaded.tail {
                        all.extend_from_slice(&seq.to_be_bytes());
                        all.extend_from_slice(&(u.len() as u64).to_be_bytes());
                        all.extend_from_slice(u);
                    }
                    Ok(all)
                });
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let count = || acked.lock().unwrap().len();
        let wait_for_progress = |from: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while count() < from + 50 {
                assert!(Instant::now() < deadline, "appends did not resume");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        wait_for_progress(0);
        pg.stop();
        std::thread::sleep(Duration::from_millis(300));
        pg.start_again();
        wait_for_progress(count());
        pg.kill();
        std::thread::sleep(Duration::from_millis(300));
        pg.start_again();
        wait_for_progress(count());
        running.store(false, Ordering::SeqCst);
    });
    assert!(
        failures.load(Ordering::SeqCst) > 0,
        "the outages were noticed"
    );

    // Rebuild the history: snapshot records (seq, len, bytes) then the tail.
    let loaded = store.load("busy").unwrap();
    let mut history = Vec::new();
    let snapshot = loaded.snapshot.unwrap_or_default();
    let mut rest = &snapshot[..];
    while !rest.is_empty() {
        let seq = u64::from_be_bytes(rest[..8].try_into().unwrap());
        let len = u64::from_be_bytes(rest[8..16].try_into().unwrap()) as usize;
        history.push((seq, rest[16..16 + len].to_vec()));
        rest = &rest[16 + len..];
    }
    history.extend(loaded.tail);
    let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..loaded.next_seq).collect::<Vec<_>>(),
        "contiguous, distinct seqs"
    );
    for (seq, update) in acked.lock().unwrap().iter() {
        assert_eq!(
            history.get(*seq as usize - 1),
            Some(&(*seq, update.clone())),
            "acknowledged append {seq} is stored"
        );
    }
    assert_eq!(
        store.audit("busy", None, usize::MAX).unwrap().len() as u64,
        loaded.next_seq - 1
    );
}

/// Two store handles on one database, as two nodes: appends to one (new) room from both
/// get distinct seqs, each call's seqs consecutive, and together exactly 1..=n.
#[test]
fn two_nodes_appending_to_one_room_get_distinct_consecutive_seqs() {
    let Some(pg) =
        PrivatePostgres::start("two_nodes_appending_to_one_room_get_distinct_consecutive_seqs")
    else {
        return;
    };
    let url = pg.create_database("nodes");
    let nodes = [PgStore::open(&url).unwrap(), PgStore::open(&url).unwrap()];
    let mut calls: Vec<(Vec<u64>, Vec<Vec<u8>>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..6u8)
            .map(|t| {
                let node = &nodes[usize::from(t % 2)];
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..40u8 {
                        let batch: Vec<_> = (0..=(i % 3)).map(|k| entry(&[t, i, k])).collect();
                        let seqs = node.append("shared", &batch).unwrap();
                        mine.push((seqs, batch.into_iter().map(|e| e.update).collect()));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut all: Vec<u64> = Vec::new();
    for (seqs, _) in &calls {
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "one call's seqs are consecutive: {seqs:?}"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    let n = all.len() as u64;
    assert_eq!(all, (1..=n).collect::<Vec<_>>());
    // Each node sees the other's entries under the seqs it was told.
    calls.sort();
    let expected: Vec<(u64, Vec<u8>)> = calls
        .into_iter()
        .flat_map(|(seqs, updates)| seqs.into_iter().zip(updates))
        .collect();
    for node in &nodes {
        assert_eq!(node.load("shared").unwrap().tail, expected);
    }
}

/// Migrations run once: opening again, and several nodes opening one fresh database at
/// the same moment, leave exactly one row per migration. A database migrated by a newer
/// yrelay is refused.
#[test]
fn schema_migrations_apply_once_and_newer_schemas_are_refused() {
    let Some(pg) =
        PrivatePostgres::start("schema_migrations_apply_once_and_newer_schemas_are_refused")
    else {
        return;
    };
    let versions = |url: &str| {
        query_strings(
            url,
            "SELECT version::text FROM yrelay_schema_migrations ORDER BY version",
        )
    };
    let url = pg.create_database("sequential");
    drop(PgStore::open(&url).unwrap());
    PgStore::open(&url)
        .unwrap()
        .append("r", &[entry(b"x")])
        .unwrap();
    assert_eq!(versions(&url), ["1"]);

    let url = pg.create_database("concurrent");
    let barrier = std::sync::Barrier::new(6);
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| {
                barrier.wait();
                PgStore::open(&url).unwrap().check().unwrap();
            });
        }
    });
    assert_eq!(versions(&url), ["1"]);
    assert_eq!(PgStore::SCHEMA_VERSION, 1);

    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute(
            "INSERT INTO yrelay_schema_migrations (version, description) VALUES (2, 'future')",
            &[],
        )
        .unwrap();
    assert!(matches!(
        PgStore::open(&url),
        Err(StoreError::UnsupportedFormat {
            found: 2,
            supported: 1
        })
    ));
    // The server's own words reach the error: an unknown database.
    let missing = pg.url_of("no_such_database");
    let message = PgStore::open(&missing).unwrap_err().to_string();
    assert!(
        message.starts_with(
            "database error: FATAL: database \"no_such_database\" does not exist (SQLSTATE 3D000)"
        ),
        "{message}"
    );
}

/// Names, labels, authors with NUL and non-ASCII characters are kept exactly (PostgreSQL
/// text cannot hold NUL: the schema stores them as bytea), and the tables are where the
/// crate docs say.
#[test]
fn the_schema_holds_any_string() {
    let Some(pg) = PrivatePostgres::start("the_schema_holds_any_string") else {
        return;
    };
    let url = pg.create_database("strings");
    let store = PgStore::open(&url).unwrap();
    let odd = "a\0b/ü🎉";
    let e = AppendEntry {
        update: vec![0, 1, 2],
        author: odd.into(),
        origin: "\0".into(),
        time_ms: u64::MAX,
    };
    store.append(odd, std::slice::from_ref(&e)).unwrap();
    store
        .save_version(
            odd,
            yrelay_store::VersionKind::Named,
            Some(odd),
            b"s",
            u64::MAX,
            u64::MAX,
        )
        .unwrap();
    let audit = store.audit(odd, None, 10).unwrap();
    assert_eq!(
        (audit[0].author.as_str(), audit[0].origin.as_str()),
        (odd, "\0")
    );
    assert_eq!(audit[0].time_ms, u64::MAX);
    let versions = store.list_versions(odd).unwrap();
    assert_eq!(versions[0].label.as_deref(), Some(odd));
    assert_eq!(
        (versions[0].seq, versions[0].created_ms),
        (u64::MAX, u64::MAX)
    );
    assert_eq!(store.list_rooms().unwrap()[0].name, odd);
    assert_eq!(store.list_rooms().unwrap()[0].last_change_ms, u64::MAX);
    let tables = query_strings(
        &url,
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_name LIKE 'yrelay%' ORDER BY table_name",
    );
    assert_eq!(
        tables,
        [
            "yrelay_audit",
            "yrelay_health",
            "yrelay_log",
            "yrelay_rooms",
            "yrelay_schema_migrations",
            "yrelay_snapshots",
            "yrelay_versions"
        ]
    );
}

/// Nothing listens: open fails at once with `Unavailable`; with a server that does not
/// answer, after the connect timeout. A malformed URL is a clear error that does not
/// repeat the URL (it may hold a password).
#[test]
fn an_unreachable_database_fails_fast_and_clearly() {
    let port = yrelay_testkit::free_port();
    let started = Instant::now();
    let result = PgStore::open(&format!("postgres://postgres@127.0.0.1:{port}/x"));
    assert!(
        matches!(&result, Err(StoreError::Unavailable(m)) if m.contains("cannot connect")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // A listener that accepts but never speaks: the connect timeout decides.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let started = Instant::now();
    let result = PgStore::open_with(
        &format!("postgres://postgres@127.0.0.1:{port}/x"),
        PgOptions {
            connect_timeout: Duration::from_millis(500),
            ..PgOptions::default()
        },
    );
    assert!(
        matches!(&result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let result = PgStore::open("postgres://user:s3cret@127.0.0.1:notaport/x");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("invalid database URL"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

/// A self-signed certificate for `names`, written as PEM files into `dir`; returns the
/// files and the certificate (to trust as the CA).
fn self_signed(dir: &std::path::Path, names: &[&str]) -> (yrelay_testkit::TlsFiles, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    let files = yrelay_testkit::TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.cert, cert.cert.pem()).unwrap();
    std::fs::write(&files.key, cert.signing_key.serialize_pem()).unwrap();
    (files, cert.cert.pem().into_bytes())
}

/// `sslmode=require` connects over TLS (the server refuses anything else) and verifies the
/// certificate: against the given CA it works, also across a server restart, and libpq's
/// `verify-full` means the same; without the CA (webpki roots only), for a host name the
/// certificate does not carry, or without `sslmode=require` it is refused with a clear
/// reason; a CA without `sslmode=require` is a configuration error, not a silent
/// connection in the clear.
#[test]
fn tls_connections_verify_the_server_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (files, ca) = self_signed(dir.path(), &["127.0.0.1"]);
    let test = "tls_connections_verify_the_server_certificate";
    let Some(mut pg) = PrivatePostgres::start_tls(test, &files) else {
        return;
    };
    let url = pg.create_database("tls");
    let with_ca = || PgOptions {
        ca_pem: Some(ca.clone()),
        ..PgOptions::default()
    };

    let store = PgStore::open_with(&format!("{url}?sslmode=require"), with_ca()).unwrap();
    assert_eq!(store.append("r", &[entry(b"1")]).unwrap(), vec![1]);
    // (The server takes TCP connections only over TLS: pg_hba.conf rejects the rest.) A
    // restart: the pool reconnects, over TLS again.
    pg.stop();
    pg.start_again();
    assert_eq!(store.append("r", &[entry(b"2")]).unwrap(), vec![2]);
    drop(store);
    let store = PgStore::open_with(&format!("{url}?sslmode=verify-full"), with_ca()).unwrap();
    assert_eq!(store.load("r").unwrap().tail.len(), 2);
    drop(store);

    // Not signed by anything in the webpki roots.
    let err = PgStore::open(&format!("{url}?sslmode=require")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("invalid peer certificate")),
        "{err}"
    );
    // The certificate names 127.0.0.1, not localhost.
    let by_name = url.replace("127.0.0.1", "localhost");
    let err = PgStore::open_with(&format!("{by_name}?sslmode=require"), with_ca()).unwrap_err();
    assert!(
        err.to_string().contains("not valid for name")
            || err.to_string().contains("NotValidForName"),
        "{err}"
    );
    // In the clear: the server refuses it (pg_hba.conf: hostnossl ... reject).
    let err = PgStore::open(&url).unwrap_err();
    assert!(err.to_string().contains("no encryption"), "{err}");
    // A CA but no sslmode=require: refused before connecting.
    let err = PgStore::open_with(&url, with_ca()).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not ask for TLS: add sslmode=require"),
        "{err}"
    );
    // A CA file that holds no certificate.
    let err = PgStore::open_with(
        &format!("{url}?sslmode=require"),
        PgOptions {
            ca_pem: Some(b"not a pem".to_vec()),
            ..PgOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "database error: database CA: no certificate in the PEM"
    );
}
