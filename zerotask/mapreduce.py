"""``from zerotask.mapreduce import AsyncMapReduce`` keeps working: the code is in zerotask.client.mapreduce."""

from zerotask.client.mapreduce import AsyncMapReduce, MapReduceJob

__all__ = ["AsyncMapReduce", "MapReduceJob"]
