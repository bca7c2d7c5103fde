-- feedwork schema 5: queues an operator paused (PauseQueue).
--
-- A paused queue takes submits and hands out nothing: every feeder's claim reads this
-- table in its statement (sql.CLAIM), so a pause stored through one feeder holds for all of
-- them, and across restarts, until ResumeQueue deletes the row. The janitor does not forget
-- a paused queue; DeleteQueue forgets it with its pause (sql.FORGET_QUEUES).
CREATE TABLE feedwork.paused_queues (
    queue text COLLATE "C" PRIMARY KEY,
    paused_at double precision NOT NULL
);
