"""Word count as a zerotask map-reduce.

Serve the tasks:   zerotask node examples/wordcount/wc.py
Run the job:       python examples/wordcount/wc.py [FILE] [--broker ENDPOINT]
(without --broker it starts its own broker and two nodes, and checks the result against Counter).
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path
from typing import Any

from zerotask import task

WORD = re.compile(r"[a-z0-9']+")


@task(name="wc.map")
def map_line(line: str) -> list[list[Any]]:
    """One line of text -> [[word, 1], ...]."""
    return [[word, 1] for word in WORD.findall(line.lower())]


@task(name="wc.reduce")
def reduce_counts(word: str, counts: list[int]) -> int:
    return sum(counts)


def count_words(text: str) -> collections.Counter[str]:
    """The same count, locally, to check the distributed one."""
    return collections.Counter(WORD.findall(text.lower()))


def main() -> None:
    from zerotask.mapreduce import AsyncMapReduce
    from zerotask.testing import Cluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", default=str(Path(__file__).with_name("apache-2.0.txt")))
    parser.add_argument("--broker", default=None, help="an existing broker (default: start one with two nodes)")
    options = parser.parse_args()
    text = Path(options.file).read_text()
    cluster = None
    endpoint = options.broker
    if endpoint is None:
        cluster = Cluster()
        cluster.start_broker()
        cluster.start_node(__file__, workers=1)
        cluster.start_node(__file__, workers=1)
        endpoint = cluster.endpoint
    try:
        with AsyncMapReduce(endpoint) as job:
            counts = job.call(map="wc.map", reduce="wc.reduce", inputs=text.splitlines()).wait(timeout=120)
        top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:10]
        print(f"{len(counts)} distinct words; the most common: {top}")
        print("matches collections.Counter:", counts == dict(count_words(text)))
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
