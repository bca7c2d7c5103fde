-- feedwork schema 4: who took each lease, as the feeder authenticated it.
--
-- `worker_id` is what a worker calls itself, unchecked; `last_caller` is the identity the
-- feeder authenticated for the last attempt's lease (an API key's name, a client
-- certificate's identity), '' when it runs without auth. Earlier attempts carry theirs as
-- the seventh item of each attempt in `history`. See feeder.store.rows.
--
-- Nothing to fill in: attempts made before this version name no caller, and NULL reads as
-- ''. A nullable column without a default: added without rewriting the table.
ALTER TABLE feedwork.tasks ADD COLUMN last_caller text;
