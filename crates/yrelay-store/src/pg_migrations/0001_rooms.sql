-- yrelay PostgreSQL store, schema version 1: rooms, their logs, snapshots, audit trails and
-- versions. Applied by PgStore::open inside the migration transaction (see pg_store.rs).
--
-- Room names, authors, origins and labels are bytea holding UTF-8: PostgreSQL text cannot
-- hold NUL, and room names may contain anything. Read them with convert_from(room, 'UTF8').
-- Unsigned 64-bit numbers are stored in bigint; seqs and version ids stay below 2^63.

-- One row per room ever written, deleted rooms included (live = false: a tombstone that
-- keeps the counters, so seqs and version ids of a reused name never go back). The row is
-- locked (SELECT ... FOR UPDATE) by every write of the room: that serializes appends of
-- several nodes and hands out consecutive seqs.
CREATE TABLE yrelay_rooms (
    room            bytea   PRIMARY KEY,
    live            boolean NOT NULL,
    next_seq        bigint  NOT NULL,
    last_change_ms  bigint  NOT NULL,
    snapshot_seq    bigint  NOT NULL,
    snapshot_bytes  bigint  NOT NULL,
    tail_entries    bigint  NOT NULL,
    tail_bytes      bigint  NOT NULL,
    next_version_id bigint  NOT NULL
);

-- The compacted state of a room (absent until compacted): seq is the last log entry it holds.
CREATE TABLE yrelay_snapshots (
    room  bytea  PRIMARY KEY,
    seq   bigint NOT NULL,
    state bytea  NOT NULL
);

-- The log tail: the entries after the snapshot.
CREATE TABLE yrelay_log (
    room    bytea  NOT NULL,
    seq     bigint NOT NULL,
    payload bytea  NOT NULL,
    PRIMARY KEY (room, seq)
);

-- One audit record per appended entry; kept when compaction folds the entry away.
CREATE TABLE yrelay_audit (
    room    bytea  NOT NULL,
    seq     bigint NOT NULL,
    author  bytea  NOT NULL,
    origin  bytea  NOT NULL,
    time_ms bigint NOT NULL,
    bytes   bigint NOT NULL,
    PRIMARY KEY (room, seq)
);

-- Saved versions. Listing selects every column but state, which PostgreSQL keeps out of
-- line (TOAST) once it is larger than about 2 kB, so a listing does not read the states.
CREATE TABLE yrelay_versions (
    room       bytea  NOT NULL,
    id         bigint NOT NULL,
    kind       text   NOT NULL CHECK (kind IN ('auto', 'named')),
    label      bytea,
    created_ms bigint NOT NULL,
    seq        bigint NOT NULL,
    bytes      bigint NOT NULL,
    state      bytea  NOT NULL,
    PRIMARY KEY (room, id)
);

-- The readiness probe's write (Store::check): one row, updated in place.
CREATE TABLE yrelay_health (
    id         integer PRIMARY KEY,
    checked_ms bigint  NOT NULL
);
