-- feedwork schema 1: tasks, idempotency keys, counters, and the database's own settings.
-- Applied by feeder.store.postgres.migrate under an advisory lock, in one transaction.

-- Settings that belong to the database, shared by every feeder on it (the token secret).
CREATE TABLE feedwork.meta (
    key text PRIMARY KEY,
    value bytea NOT NULL
);

-- Task ids come from one sequence, a block at a time: a feeder takes INCREMENT ids per
-- nextval and hands them out itself, so a submit rarely needs a round trip for ids. Ids
-- are never reused (a lease token of a purged task must not match a new one).
CREATE SEQUENCE feedwork.task_ids AS bigint START WITH 1 INCREMENT BY 1024;

-- One row per task, as feeder.store.rows lays it out (shared with the SQLite store).
-- Times are seconds since the epoch from the feeders' clocks (the state machine's `now`).
-- Names compare byte by byte (COLLATE "C"): queue names and keys are identifiers, and a
-- locale's collation would make every index comparison a call into the C library.
CREATE TABLE feedwork.tasks (
    id bigint PRIMARY KEY,
    queue text COLLATE "C" NOT NULL,
    payload bytea NOT NULL,
    headers text,
    priority integer NOT NULL,
    state smallint NOT NULL,
    max_attempts integer NOT NULL,
    created_at double precision NOT NULL,
    ready_at double precision NOT NULL,
    attempt integer NOT NULL,
    failures integer NOT NULL,
    not_before double precision,
    lease_deadline double precision,
    lease_duration double precision,
    lease_granted double precision,
    idempotency_key text,
    result bytea,
    finished_at double precision,
    history text,
    version integer NOT NULL,
    last_attempt integer,
    last_worker text,
    last_leased_at double precision,
    last_ended_at double precision,
    last_outcome smallint,
    last_error text
);

-- Claims: the READY tasks of a queue in lease order. (State values are those of
-- feeder.core.model.State: 1 scheduled, 2 ready, 3 leased, 4 completed, 5 dead,
-- 6 cancelled.)
CREATE INDEX tasks_ready ON feedwork.tasks (queue, priority DESC, ready_at, id)
    WHERE state = 2;
-- The reaper: lease deadlines and not-before times.
CREATE INDEX tasks_leased ON feedwork.tasks (lease_deadline) WHERE state = 3;
CREATE INDEX tasks_scheduled ON feedwork.tasks (not_before) WHERE state = 1;
-- Dead-letter listing, and the retention purge.
CREATE INDEX tasks_dead ON feedwork.tasks (queue, id) WHERE state = 5;
CREATE INDEX tasks_finished ON feedwork.tasks (finished_at) WHERE state IN (4, 6);

-- Idempotency keys, unique per queue. A table of their own rather than a unique index on
-- tasks: every lease and ack writes a new version of the task row, and each version would
-- add an entry to such an index.
CREATE TABLE feedwork.task_keys (
    queue text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    task_id bigint NOT NULL,
    PRIMARY KEY (queue, key)
);

-- Tasks per state ('state:N') and running totals ('event:NAME') per queue. Each
-- connection adds to a shard of its own, so feeders committing at once do not queue up
-- on one row per queue; a counter's value is the sum of its shards.
CREATE TABLE feedwork.counters (
    queue text COLLATE "C" NOT NULL,
    counter text COLLATE "C" NOT NULL,
    shard integer NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (queue, counter, shard)
);

-- Per queue, how many tasks submits have made pending, ever. Submits to a queue update its
-- row, so they take turns: see sql.py (_GATE) for how that makes max_depth exact when
-- several feeders submit to one queue at once.
CREATE TABLE feedwork.queue_gates (
    queue text COLLATE "C" PRIMARY KEY,
    admitted bigint NOT NULL
);

-- Refuses a submit that would take a queue past its max_depth: the submit's statement calls
-- it, and its error undoes the whole statement. It decides nothing (the feeder passes the
-- limit, the statement the depth); SQLSTATE FWQ01, the figures in DETAIL for the feeder.
CREATE FUNCTION feedwork.refuse_submit(queue text, depth bigint, max_depth bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'queue % is full', queue
        USING ERRCODE = 'FWQ01', DETAIL = format('%s %s %s', depth, max_depth, queue);
END
$$;
