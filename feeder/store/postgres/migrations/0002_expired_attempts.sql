-- feedwork schema 2: which attempts of a task ended by expiry, kept whole.
--
-- A task's history keeps only its newest attempts, but a late Ack is decided by how its
-- attempt ended (adopted if its lease expired, rejected if its own worker failed or
-- released it), however long ago: the state machine keeps the expired ones as ranges of
-- attempt numbers, stored here as text, "1-49,51,60-62" (NULL: none, as for most tasks).
-- See feeder.store.rows.
ALTER TABLE feedwork.tasks ADD COLUMN expired_attempts text;

-- Filled in from each task's history: the attempts it still holds that ended by expiry
-- (outcome 4), as runs of consecutive numbers. Attempts trimmed from a history before this
-- version are not known to have expired: a late ack of one is rejected, never adopted.
WITH expired AS (
    SELECT t.id, (e.value ->> 0)::int AS attempt
    FROM feedwork.tasks t, jsonb_array_elements(t.history::jsonb) AS e(value)
    WHERE t.history IS NOT NULL AND (e.value ->> 4)::int = 4
    UNION
    SELECT id, last_attempt FROM feedwork.tasks WHERE last_outcome = 4
), runs AS (
    SELECT id, min(attempt) AS first, max(attempt) AS last
    FROM (
        SELECT id, attempt, attempt - row_number() OVER (PARTITION BY id ORDER BY attempt) AS run
        FROM expired
    ) AS numbered
    GROUP BY id, run
), ranges AS (
    SELECT id, string_agg(
        CASE WHEN first = last THEN first::text ELSE first || '-' || last END, ','
        ORDER BY first
    ) AS text
    FROM runs GROUP BY id
)
UPDATE feedwork.tasks t SET expired_attempts = ranges.text
FROM ranges WHERE t.id = ranges.id;
