"""The Celery side of the benchmark: ``python -m celery -A bench.celery_app worker``.

The worker finds Redis through BENCH_CELERY_URL (broker and result backend, one database of its own);
the producer builds its own app on the same URL with :func:`make_app`.
"""

from __future__ import annotations

import os

from celery import Celery  # type: ignore[import-untyped]

QUEUE = "bench"
ADD = "bench.add"


def make_app(url: str) -> Celery:
    app = Celery("bench", broker=url, backend=url)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        result_expires=3600,
        worker_hijack_root_logger=False,
    )
    return app


app = make_app(os.environ.get("BENCH_CELERY_URL", "redis://127.0.0.1:6379/13"))


@app.task(name=ADD)  # type: ignore[untyped-decorator]
def add(x: int, y: int) -> int:
    return x + y
