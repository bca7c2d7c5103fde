-- feedwork schema 3: queues are forgotten once they hold no task, so a queue's gate row can
-- go and be made anew.
--
-- A submit's depth check reads a gate's `admitted` in its snapshot and again after it has
-- taken its turn on the row; the difference is what other submits admitted meanwhile (see
-- sql.py, _GATE). That holds only while both readings are of one row: a row deleted by
-- the janitor (feeder.store.postgres.sql, FORGET_QUEUES) and made anew starts again from
-- the tasks of one submit. `generation` names each making of a row, by the transaction
-- that made it, so that a submit can tell that its gate was forgotten and made anew
-- meanwhile. (Existing rows share the generation of this migration: each queue has one
-- row, so no two rows of a queue are ever confused.)
ALTER TABLE feedwork.queue_gates
    ADD COLUMN generation xid8 NOT NULL DEFAULT pg_current_xact_id();
