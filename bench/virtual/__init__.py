"""The virtual-time benchmark of the realtime lane (issue 11): an hour of traffic in seconds.

The real ``RealtimeEngine`` and router, with the shipped defaults, run on an asyncio loop whose
clock jumps to the next timer (``loop``) against in-process channel models (``channels``) that
sample each call from a seeded scenario's ground truth (``scenarios``). The same scenarios run
through the peers (``peers``) and are solved with hindsight (``optimum``); ``bench/virtual_bench.py``
is the entry point (``python -m bench virtual_bench``).
"""
