"""The statements of the PostgreSQL store.

No rule of the state machine is here: the statements store what the state machine decided
(every write guarded by the version the decision was made from), find tasks by what is
stored (ready, due, dead, finished), and keep counts. Batches travel as arrays that
`unnest` turns into rows, so one statement writes a whole batch in one round trip.
"""

from __future__ import annotations

import functools

from feeder.core.model import State
from feeder.store.rows import COLUMNS, columns_without_bytes, columns_without_payload

T = "feedwork.tasks"
READY, LEASED, SCHEDULED, DEAD = (
    int(s) for s in (State.READY, State.LEASED, State.SCHEDULED, State.DEAD)
)
FINAL = f"({int(State.COMPLETED)}, {int(State.CANCELLED)})"

# -- counters ------------------------------------------------------------------------------
# A statement's counter changes arrive as arrays (kind, queue, counter, delta): the
# counters each kind of change moves (see store._Counts); `applied` has the id and the
# kind of each write that applied, and a kind counts as often as it applied (kind -1:
# belongs to no change, always counts once). Sorted, so that two transactions that share
# a shard lock its rows in the same order.
_COUNT = """
counted AS (
    INSERT INTO feedwork.counters (queue, counter, shard, value)
    SELECT c.queue, c.counter, $1, sum(c.delta * coalesce(a.n, 1))
    FROM unnest($2::int[], $3::text[], $4::text[], $5::bigint[]) AS c(kind, queue, counter, delta)
    LEFT JOIN (SELECT kind, count(*) AS n FROM applied GROUP BY kind) AS a USING (kind)
    WHERE c.kind < 0 OR a.n IS NOT NULL
    GROUP BY c.queue, c.counter
    HAVING sum(c.delta * coalesce(a.n, 1)) <> 0
    ORDER BY c.queue, c.counter
    ON CONFLICT (queue, counter, shard)
        DO UPDATE SET value = feedwork.counters.value + excluded.value
)"""

# -- submit --------------------------------------------------------------------------------
# A submit is one statement, committed on its own: it inserts the tasks, counts them, and
# checks each queue's depth against its max_depth, all or nothing.
#
# The depth check is exact across feeders. Every submit updates its queues' rows in
# queue_gates (`admitted`: how many tasks submits have made pending, ever), in queue
# order, so submits to a queue take turns on its row: a submit that has to wait resumes on
# the latest version of the row. Its statement's snapshot was taken before the wait, so
# the pending count it reads from the counters may miss submits that committed meanwhile;
# exactly those show as the difference between the row's latest `admitted` and the one in
# the snapshot, and are added back. (Tasks that stopped being pending meanwhile may be
# missed too; that only errs on the safe side. A redrive does not go through the gate:
# max_depth limits submits, not redrives.) A queue over its limit makes the statement
# call feedwork.refuse_submit, whose error undoes the whole statement.
#
# The janitor deletes the gate row of a queue that holds no task (FORGET_QUEUES), and the
# next submit makes a new one. A submit whose snapshot has the old row (another
# `generation`, see migration 0003) counts what the new row admitted, all of it: the queue
# was empty when its old row went.
_GATE = """
stale AS (
    SELECT a.queue, a.n, coalesce((
        SELECT sum(value) FROM feedwork.counters c
        WHERE c.queue = a.queue AND c.counter IN (
            'state:{scheduled}', 'state:{ready}', 'state:{leased}')
    ), 0)::bigint AS pending,
    coalesce(g.admitted, 0) AS seen, g.generation
    FROM adding a LEFT JOIN feedwork.queue_gates g USING (queue)
), gate AS (
    INSERT INTO feedwork.queue_gates AS g (queue, admitted)
    SELECT queue, n FROM adding WHERE n > 0 ORDER BY queue
    ON CONFLICT (queue) DO UPDATE SET admitted = g.admitted + excluded.admitted
    RETURNING queue, admitted, generation
), depths AS (
    SELECT s.queue, s.n, CASE
        WHEN s.generation <> g.generation THEN g.admitted
        ELSE s.pending + g.admitted - s.seen
    END AS depth
    FROM stale s JOIN gate g USING (queue)
), refused AS (
    SELECT feedwork.refuse_submit(d.queue, d.depth - d.n, m.max_depth)
    FROM depths d
    JOIN unnest(${limit_queues}::text[], ${limit_depths}::bigint[]) AS m(queue, max_depth)
        USING (queue)
    WHERE d.depth > m.max_depth
)"""

_COLUMNS_OF_NEW = (
    "id, queue, payload, headers, priority, state, max_attempts, created_at, ready_at,"
    " not_before, lease_duration, idempotency_key"
)
_NEW_ARRAYS = (
    "$6::bigint[], $7::text[], $8::bytea[], $9::text[], $10::int[], $11::smallint[],"
    " $12::int[], $13::float8[], $14::float8[], $15::float8[], $16::float8[], $17::text[]"
)
_INSERT_INTO = f"""
    INSERT INTO {T} (id, queue, payload, headers, priority, state, max_attempts, created_at,
                     ready_at, attempt, failures, not_before, lease_duration, idempotency_key,
                     version)"""
_SELECT_NEW = """
    SELECT id, queue, payload, headers, priority, state, max_attempts, created_at, ready_at,
           0, 0, not_before, lease_duration, idempotency_key, 1"""


def _gate(limit_queues: int) -> str:
    return _GATE.format(
        scheduled=int(State.SCHEDULED),
        ready=READY,
        leased=LEASED,
        limit_queues=limit_queues,
        limit_depths=limit_queues + 1,
    ).strip()


# Tasks with idempotency keys: a task is inserted only if its key was free (the unique key
# decides between feeders submitting one key at once: the second waits for the first to
# commit, then finds the key taken). $18 the kinds of change (see store._Counts), $19 and
# $20 the queues and their max_depth. Returns the ids inserted.
INSERT_TASKS = f"""
WITH new AS (
    SELECT * FROM unnest({_NEW_ARRAYS}, $18::int[]) AS n({_COLUMNS_OF_NEW}, kind)
), keyed AS (
    INSERT INTO feedwork.task_keys (queue, key, task_id)
    SELECT queue, idempotency_key, id FROM new WHERE idempotency_key IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING task_id
), fresh AS (
    SELECT * FROM new WHERE idempotency_key IS NULL OR id IN (SELECT task_id FROM keyed)
), adding AS (
    SELECT queue, count(*) AS n FROM fresh GROUP BY queue
), {_gate(19)}, inserted AS ({_INSERT_INTO}{_SELECT_NEW}
    FROM fresh WHERE NOT EXISTS (SELECT FROM refused)
    RETURNING id
), applied AS (
    SELECT id, fresh.kind FROM inserted JOIN fresh USING (id)
), {_COUNT.strip()}
SELECT id FROM applied
"""
# Tasks without keys: every one is inserted (or none), so the counts come as kind -1 and
# the tasks per queue from the feeder: no key table, nothing to join. $18 and $19 the
# queues and their max_depth, $20 how many tasks each queue gets.
INSERT_UNKEYED_TASKS = f"""
WITH adding AS (
    SELECT * FROM unnest($18::text[], $20::bigint[]) AS a(queue, n)
), {_gate(18)}, applied AS ({_INSERT_INTO}{_SELECT_NEW}
    FROM unnest({_NEW_ARRAYS}) AS n({_COLUMNS_OF_NEW})
    WHERE NOT EXISTS (SELECT FROM refused)
    RETURNING id, 0 AS kind
), {_COUNT.strip()}
SELECT id FROM applied
"""
# The same for plain tasks: ready at once, no headers, no lease duration of their own (most
# tasks): 6 arrays to decode instead of 12. $12 and $13 the queues and their max_depth, $14
# how many tasks each queue gets. PostgreSQL CPU per submitted task at batch 100: 13.0 us
# with every column, 12.6 us like this, 8.9 us for a bare table's INSERTs.
INSERT_PLAIN_TASKS = f"""
WITH adding AS (
    SELECT * FROM unnest($12::text[], $14::bigint[]) AS a(queue, n)
), {_gate(12)}, applied AS (
    INSERT INTO {T} (id, queue, payload, priority, state, max_attempts, created_at,
                     ready_at, attempt, failures, version)
    SELECT id, queue, payload, priority, {READY}, max_attempts, created_at, created_at,
           0, 0, 1
    FROM unnest(
        $6::bigint[], $7::text[], $8::bytea[], $9::int[], $10::int[], $11::float8[]
    ) AS n(id, queue, payload, priority, max_attempts, created_at)
    WHERE NOT EXISTS (SELECT FROM refused)
    RETURNING id, 0 AS kind
), {_COUNT.strip()}
SELECT id FROM applied
"""
# The SQLSTATE of feedwork.refuse_submit (see the schema).
QUEUE_FULL = "FWQ01"
# The tasks that hold the given keys (of the specs whose key was taken).
TASKS_BY_KEY = f"""
SELECT {", ".join("t." + c.strip() for c in COLUMNS.split(","))}
FROM unnest($1::text[], $2::text[]) AS k(queue, key)
JOIN feedwork.task_keys USING (queue, key)
JOIN {T} t ON t.id = feedwork.task_keys.task_id
"""


NEXT_IDS = "SELECT nextval('feedwork.task_ids') FROM generate_series(1, $1)"
ID_BLOCK = (
    "SELECT increment_by FROM pg_sequences"
    " WHERE schemaname = 'feedwork' AND sequencename = 'task_ids'"
)

# -- claim ---------------------------------------------------------------------------------
# The ready tasks of a queue in lease order, each marked with a session advisory lock on its
# id as it is read; a task another claim has marked is passed over. The marks are taken in
# the outer query, as rows are pulled, so whatever the plan a claim holds at most $2 of
# them (the volatile function keeps PostgreSQL from pushing the condition down into the
# ordered subquery); the inner LIMIT only bounds how far it looks ($3 rows) when the head
# of the queue is marked by others. An uncontended claim reads $2 rows. No row lock: the
# claim's write is guarded by version like any other (see store._claim). A paused queue
# (one row in paused_queues, read once per statement) gives nothing: the pause holds for
# every feeder from the claims that start after it committed.
CLAIM = f"""
SELECT c.* FROM (
    SELECT {COLUMNS} FROM {T}
    WHERE queue = $1 AND state = {READY}
        AND NOT EXISTS (SELECT FROM feedwork.paused_queues p WHERE p.queue = $1)
    ORDER BY priority DESC, ready_at, id
    LIMIT $3
) AS c
WHERE pg_try_advisory_lock(c.id)
LIMIT $2
"""
# Drops a claim's marks (the pooled connection holds no other advisory lock).
UNMARK = "SELECT pg_advisory_unlock_all()"

# -- apply ---------------------------------------------------------------------------------
# The columns a decision may change, in the order of `store._changed_values`, with their
# array types. (The others, queue, payload, headers..., are set once, when a task is made.)
CHANGEABLE: tuple[tuple[str, str], ...] = (
    ("state", "smallint"),
    ("ready_at", "float8"),
    ("attempt", "int"),
    ("failures", "int"),
    ("not_before", "float8"),
    ("lease_deadline", "float8"),
    ("lease_granted", "float8"),
    ("result", "bytea"),
    ("finished_at", "float8"),
    ("history", "text"),
    ("last_attempt", "int"),
    ("last_worker", "text"),
    ("last_leased_at", "float8"),
    ("last_ended_at", "float8"),
    ("last_outcome", "smallint"),
    ("last_error", "text"),
    ("last_caller", "text"),
    ("expired_attempts", "text"),
    ("version", "int"),
)


# A group of updates, as `apply_statement` takes it: the columns its changes alter
# (indexes into CHANGEABLE), and for the kind and each of those columns whether every
# change of the group has the same value (one parameter) or not (an array).
Group = tuple[tuple[int, ...], tuple[bool, ...]]


@functools.lru_cache(maxsize=256)
def apply_statement(groups: tuple[Group, ...], deletes: bool) -> str:
    """The statement that applies guarded changes: one UPDATE per group of changes that
    change the same columns (`groups`), and the deletions if `deletes`, with their counts
    (see `_COUNT`), in one statement: one round trip, all or nothing. The ids of one
    statement are distinct (a task changed twice in one batch takes two statements).

    Parameters after the counts' $1-$5: per group, the ids and the guards (the versions
    the decisions were made from), then the kinds of change and the changed columns, each
    one value if the group shares it, else an array; then, for deletions, ids, guards and
    kinds. Only the columns a change alters are written: a lease or an ack leaves most of
    the row as it is. A value the whole group shares (a claim's state, deadline and
    worker, an ack's finish time) is bound once rather than as an array of copies: every
    array costs decoding and a column of the join (about 1 us a task for a claim). Tasks
    are found by `id = ANY(ids)` (primary key probes) before the join with the decided
    values, which could otherwise be planned as a scan of the whole table. The guards stay
    in the join even when shared: as a filter of their own they make the planner expect
    one row and join by nested loop, a comparison per pair of ids (4,096 for 64 tasks,
    about 9 us a task, measured)."""
    parts: list[str] = []
    sources: list[str] = []
    number = 6
    for index, (group, shared) in enumerate(groups):
        ids, guards = number, number + 1
        number += 2
        arrays = [f"${ids}::bigint[]", f"${guards}::int[]"]
        names, values = ["id", "guard"], {}
        fields = [("kind", "int"), *(CHANGEABLE[c] for c in group)]
        for (name, kind), one in zip(fields, shared, strict=True):
            if one:
                values[name] = f"${number}::{kind}"
            else:
                arrays.append(f"${number}::{kind}[]")
                names.append(name)
                values[name] = f"v.{name}"
            number += 1
        sets = ", ".join(f"{CHANGEABLE[c][0]} = {values[CHANGEABLE[c][0]]}" for c in group)
        parts.append(
            f"u{index} AS (\n    UPDATE {T} t SET {sets}\n"
            f"    FROM unnest({', '.join(arrays)}) AS v({', '.join(names)})\n"
            f"    WHERE t.id = ANY(${ids}::bigint[]) AND t.id = v.id AND t.version = v.guard\n"
            f"    RETURNING t.id, {values['kind']} AS kind\n)"
        )
        sources.append(f"SELECT id, kind FROM u{index}")
    if deletes:
        ids, guards, kinds = number, number + 1, number + 2
        parts.append(
            f"deleted AS (\n    DELETE FROM {T} t\n"
            f"    USING unnest(${ids}::bigint[], ${guards}::int[], ${kinds}::int[])"
            " AS d(id, guard, kind)\n"
            f"    WHERE t.id = ANY(${ids}::bigint[]) AND t.id = d.id AND t.version = d.guard\n"
            "    RETURNING t.id, t.queue, t.idempotency_key, d.kind\n)"
        )
        parts.append(
            "unkeyed AS (\n    DELETE FROM feedwork.task_keys k USING deleted d\n"
            "    WHERE k.queue = d.queue AND k.key = d.idempotency_key AND k.task_id = d.id\n)"
        )
        sources.append("SELECT id, kind FROM deleted")
    if not sources:
        sources.append("SELECT NULL::bigint AS id, NULL::int AS kind WHERE false")
    parts.append(f"applied AS (\n    {' UNION ALL '.join(sources)}\n)")
    parts.append(_COUNT.strip())
    return "WITH " + ",\n".join(parts) + "\nSELECT id FROM applied\n"


# -- reads ---------------------------------------------------------------------------------
GET = f"SELECT {COLUMNS} FROM {T} WHERE id = ANY($1::bigint[])"
# The same without payloads (an empty one in their place), for decisions that need none.
_WITHOUT_PAYLOAD = columns_without_payload("''::bytea")
GET_WITHOUT_PAYLOADS = f"SELECT {_WITHOUT_PAYLOAD} FROM {T} WHERE id = ANY($1::bigint[])"
DUE = f"""
(SELECT {COLUMNS} FROM {T} WHERE state = {LEASED} AND lease_deadline <= $1
 ORDER BY lease_deadline LIMIT $2)
UNION ALL
(SELECT {COLUMNS} FROM {T} WHERE state = {SCHEDULED} AND not_before <= $1
 ORDER BY not_before LIMIT $2)
"""
NEXT_DUE = f"""
SELECT least(
    (SELECT min(lease_deadline) FROM {T} WHERE state = {LEASED}),
    (SELECT min(not_before) FROM {T} WHERE state = {SCHEDULED})
)
"""
_WITHOUT_BYTES = columns_without_bytes("''::bytea")


@functools.lru_cache(maxsize=64)
def list_statement(states: tuple[int, ...] | None, *, newest_first: bool, payloads: bool) -> str:
    """A page of a queue's tasks in `states` (None: any) in id order, after $2 (before it,
    newest first), at most $3. The states are literals, so that a listing of dead tasks
    reads the tasks_dead index (a one-state IN list is planned as an equality)."""
    where = "" if states is None else f" AND state IN ({', '.join(map(str, states))})"
    order = "id < $2 ORDER BY id DESC" if newest_first else "id > $2 ORDER BY id"
    columns = COLUMNS if payloads else _WITHOUT_BYTES
    return f"SELECT {columns} FROM {T} WHERE queue = $1{where} AND {order} LIMIT $3"


# The current leases, by queue, worker and caller of their attempt (the tasks_leased
# index: as many rows as leases in flight).
LEASE_HOLDERS = f"""
SELECT queue, coalesce(last_worker, ''), coalesce(last_caller, ''), count(*),
       min(last_leased_at), max(last_leased_at)
FROM {T} WHERE state = {LEASED} AND ($1::text IS NULL OR queue = $1)
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 LIMIT $2
"""
# Which of these queues the database knows (any counter row: tasks now or before, until
# the queue is forgotten).
KNOWN_QUEUES = """
SELECT DISTINCT queue FROM feedwork.counters WHERE queue = ANY($1::text[])
"""
# How many queues submits have made and the janitor has not forgotten (one gate row each;
# a queue copied in by `db copy` counts from its first submit).
QUEUE_COUNT = "SELECT count(*) FROM feedwork.queue_gates"
# A page of queue names, in name order (each distinct name, read off the primary keys):
# the queues with counters, and paused ones (a pause may outlive a queue's counters, when
# it was stored as the janitor forgot the queue).
QUEUE_PAGE = """
SELECT queue FROM (
    SELECT DISTINCT queue FROM feedwork.counters WHERE queue > $1
    UNION
    SELECT queue FROM feedwork.paused_queues WHERE queue > $1
) AS q ORDER BY queue LIMIT $2
"""
# When each of these queues was paused (those that are); every paused queue with NULL.
PAUSED = """
SELECT queue, paused_at FROM feedwork.paused_queues
WHERE $1::text[] IS NULL OR queue = ANY($1::text[])
"""
PAUSE = """
INSERT INTO feedwork.paused_queues (queue, paused_at) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING queue
"""
# A resume, and the queue's ready tasks to announce (its counters, as its claims left them).
RESUME = f"""
WITH resumed AS (DELETE FROM feedwork.paused_queues WHERE queue = $1 RETURNING queue)
SELECT coalesce((
    SELECT sum(value) FROM feedwork.counters WHERE queue = $1 AND counter = 'state:{READY}'
), 0)::bigint FROM resumed
"""
COUNTS = """
SELECT queue, counter, sum(value)::bigint FROM feedwork.counters
WHERE $1::text[] IS NULL OR queue = ANY($1::text[])
GROUP BY queue, counter
"""
# The oldest ready time of each queue: the first task of each priority in ready order,
# found by walking the claim index one priority at a time (a loose index scan), so it
# costs a few index probes per priority, not a scan of a deep queue.
OLDEST_READY = f"""
SELECT q.queue, (
    WITH RECURSIVE p(priority) AS (
        (SELECT priority FROM {T} WHERE queue = q.queue AND state = {READY}
         ORDER BY priority DESC LIMIT 1)
        UNION ALL
        SELECT (SELECT priority FROM {T} WHERE queue = q.queue AND state = {READY}
                AND priority < p.priority ORDER BY priority DESC LIMIT 1)
        FROM p WHERE p.priority IS NOT NULL
    )
    SELECT min((SELECT ready_at FROM {T} WHERE queue = q.queue AND state = {READY}
                AND priority = p.priority ORDER BY ready_at LIMIT 1))
    FROM p WHERE p.priority IS NOT NULL
)
FROM unnest($1::text[]) AS q(queue)
"""

# -- maintenance ---------------------------------------------------------------------------
PURGE_FINISHED = f"""
WITH doomed AS (
    SELECT id FROM {T} WHERE state IN {FINAL} AND finished_at < $1
    ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED
), deleted AS (
    DELETE FROM {T} t USING doomed WHERE t.id = doomed.id
    RETURNING t.id, t.queue, t.state, t.idempotency_key
), unkeyed AS (
    DELETE FROM feedwork.task_keys k USING deleted d
    WHERE k.queue = d.queue AND k.key = d.idempotency_key AND k.task_id = d.id
), counted AS (
    INSERT INTO feedwork.counters (queue, counter, shard, value)
    SELECT queue, 'state:' || state, $3, -count(*) FROM deleted
    GROUP BY queue, state ORDER BY 1, 2
    ON CONFLICT (queue, counter, shard)
        DO UPDATE SET value = feedwork.counters.value + excluded.value
)
SELECT count(*) FROM deleted
"""
# Forgetting queues that hold no task: three statements in one READ COMMITTED transaction.
#
# The proof that a queue is empty is its state counters: every statement that adds, moves
# or deletes tasks (submit, apply, purge, `db copy`) moves them in the same statement, so
# in any snapshot they are the number of the queue's tasks in each state. (NOT EXISTS over
# the tasks themselves would need an index on the queue alone, an insertion into it at
# every lease and ack, or a scan of the whole table per pass.) The ready and dead tasks
# are looked for as well, through their own indexes: a cheap check that the counters are
# not wrong for the states where tasks wait longest.
#
# 1. EMPTY_QUEUES: up to $1 queues whose state counters are all zero (or that have a gate
#    and no counter at all): candidates, read before any lock.
# 2. LOCK_GATES: takes the candidates' gate rows, making one for a queue that has none
#    (a queue copied in by `db copy`, one whose totals were counted after it was
#    forgotten, or one another forgetting has just forgotten), in queue order as submits
#    do. From here until the commit no submit can add a task to them: each must take its
#    turn on the gate row first.
# 3. FORGET_QUEUES, a new statement and so a new snapshot, taken after the locks: it sees
#    every submit that took its turn before, and deletes the gate and the counters of the
#    queues that still hold no task. A submit waiting on a gate row goes on when the
#    transaction commits, and makes a new row (see _GATE). Counter rows are locked in key
#    order, as every writer of counters locks them.
_STATE_COUNTERS_ZERO = """NOT EXISTS (
        SELECT FROM feedwork.counters c
        WHERE c.queue = {queue} AND c.counter LIKE 'state:%'
        GROUP BY c.counter HAVING sum(c.value) <> 0
    )"""
#
# Paused queues are kept, unless named in $2 (the queues an operator deletes; NULL: the
# janitor's pass over every queue): then only those are candidates, paused or not (a pause
# that outlived its queue's counters too), and a paused one goes with its pause.
EMPTY_QUEUES = """
SELECT queue FROM (
    SELECT queue FROM (
        SELECT queue, counter, sum(value) AS value FROM feedwork.counters
        WHERE $2::text[] IS NULL OR queue = ANY($2::text[])
        GROUP BY queue, counter
    ) AS c
    GROUP BY queue
    HAVING NOT bool_or(counter LIKE 'state:%' AND value <> 0)
    UNION
    SELECT queue FROM feedwork.queue_gates g
    WHERE ($2::text[] IS NULL OR g.queue = ANY($2::text[]))
        AND NOT EXISTS (SELECT FROM feedwork.counters c WHERE c.queue = g.queue)
    UNION
    SELECT queue FROM feedwork.paused_queues WHERE queue = ANY($2::text[])
) AS e
WHERE $2::text[] IS NOT NULL
    OR NOT EXISTS (SELECT FROM feedwork.paused_queues p WHERE p.queue = e.queue)
ORDER BY queue LIMIT $1
"""
LOCK_GATES = """
INSERT INTO feedwork.queue_gates AS g (queue, admitted)
SELECT queue, 0 FROM unnest($1::text[]) AS q(queue) ORDER BY queue
ON CONFLICT (queue) DO UPDATE SET admitted = g.admitted
"""
# $2: the queues were named (an operator's delete): paused ones go too, with their pause;
# otherwise a queue paused meanwhile is kept.
FORGET_QUEUES = f"""
WITH gone AS (
    DELETE FROM feedwork.queue_gates g
    WHERE g.queue = ANY($1::text[])
        AND {_STATE_COUNTERS_ZERO.format(queue="g.queue")}
        AND NOT EXISTS (SELECT FROM {T} t WHERE t.queue = g.queue AND t.state = {READY})
        AND NOT EXISTS (SELECT FROM {T} t WHERE t.queue = g.queue AND t.state = {DEAD})
        AND ($2 OR NOT EXISTS (SELECT FROM feedwork.paused_queues p WHERE p.queue = g.queue))
    RETURNING g.queue, g.generation = pg_current_xact_id() AS made_here
), locked AS (
    SELECT c.queue, c.counter, c.shard FROM feedwork.counters c JOIN gone USING (queue)
    ORDER BY c.queue, c.counter, c.shard FOR UPDATE OF c
), dropped AS (
    DELETE FROM feedwork.counters c USING locked l
    WHERE c.queue = l.queue AND c.counter = l.counter AND c.shard = l.shard
), unpaused AS (
    DELETE FROM feedwork.paused_queues p USING gone WHERE p.queue = gone.queue
    RETURNING p.queue
)
-- A gate LOCK_GATES made, for a queue without counters, was of a queue another
-- forgetting (a leader before this one) had forgotten already: not forgotten again here
-- (unless a pause of it was left, which goes now).
SELECT queue FROM gone
WHERE NOT made_here OR EXISTS (SELECT FROM locked l WHERE l.queue = gone.queue)
    OR EXISTS (SELECT FROM unpaused u WHERE u.queue = gone.queue)
"""
# Folds every counter's shards into shard 0, so that counters do not keep a row per shard
# that ever wrote to them.
# Rows are locked in key order (writers lock theirs in key order too: no deadlock).
FOLD_COUNTERS = """
WITH locked AS (
    SELECT queue, counter, shard FROM feedwork.counters WHERE shard <> 0
    ORDER BY queue, counter, shard FOR UPDATE
), moved AS (
    DELETE FROM feedwork.counters c USING locked l
    WHERE c.queue = l.queue AND c.counter = l.counter AND c.shard = l.shard
    RETURNING c.queue, c.counter, c.value
)
INSERT INTO feedwork.counters (queue, counter, shard, value)
SELECT queue, counter, 0, sum(value) FROM moved GROUP BY queue, counter ORDER BY 1, 2
ON CONFLICT (queue, counter, shard)
    DO UPDATE SET value = feedwork.counters.value + excluded.value
"""
SECRET = "SELECT value FROM feedwork.meta WHERE key = 'token_secret'"
SET_SECRET = (
    "INSERT INTO feedwork.meta (key, value) VALUES ('token_secret', $1) ON CONFLICT DO NOTHING"
)
