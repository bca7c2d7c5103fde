"""The soak: the feeder's memory stays bounded by its configuration, not by its traffic.

    make soak                                   # 30 minutes on SQLite
    SOAK_MINUTES=3 make soak                    # a smoke run
    make soak SOAK_ARGS="--store postgres --rate 800"
    .venv/bin/python -m tests.soak --help

A real feeder (`python -m feeder`, on SQLite or on a new PostgreSQL database) runs with its
default retention (24 hours): every finished task and its idempotency key is kept for the
whole run, on disk, and the memory must not grow with them. (`--retention 2m` has the
janitor purge finished tasks all along instead, so that the memory they took must come
back.) Producer threads (`tests/soak/load.py`) submit at a
steady rate (500 tasks/s) with an idempotency key per task and payloads of 100 B to
16 KiB; worker processes (`python -m worker` with the fault tests' ledger handler) complete
every task. Every few seconds the feeder's VmRSS (/proc/PID/status) and GetStats are
sampled into rss.csv; a table shows them as the run goes.

At the end the load stops, the queue drains, and the run passes when
- the memory was flat after the warm-up (`tests/soak/verdict.py` says what flat means and
  why), and
- every task the producers were told was stored was completed, once, by the workers' ack
  ledgers (`--ack-ledger`), and the feeder's totals agree; keys resubmitted during the run
  found their tasks.
Otherwise it exits 1 and says why. Not part of `make test`: it takes half an hour.

Everything runs on 127.0.0.1 and is bounded in time; the feeder and workers die with the
soak (PR_SET_PDEATHSIG) and are stopped on Ctrl-C or SIGTERM; the PostgreSQL database is
dropped. The CSV and the logs are kept in the directory printed at the end (`--keep`
keeps the database and the ledgers too).
"""
