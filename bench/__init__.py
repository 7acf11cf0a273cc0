"""The zerotask benchmark: zerotask (memory and SQLite stores), Celery and a raw pyzmq ceiling, interleaved.

``python -m bench`` (from the repository root, or ``make bench``) starts every system as real processes,
measures throughput, latency and a large queue, prints one report and appends it to BENCHMARKS.md.
``python -m bench -h`` lists the options.
"""
