"""feedwork benchmarks: drain throughput of feedwork against peer queues.

Run ``python -m bench --help``. The workload API lives in :mod:`bench.core`, the cases in
:mod:`bench.cases`; see bench/README.md.
"""
