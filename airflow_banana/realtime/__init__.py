"""The realtime lane: items through the router and the channels now, one payer per item.

Modules: ``engine`` (drives items through the router and the channels on one asyncio loop and
commits them through ``storage.outputs``), ``claims`` (an item's lease, so overlapping tasks
never pay twice for one image) and ``preflight`` (one free call per channel before the first
paid one). Every decision (which channel, wait, give up) is ``routing/``'s, pure; nothing here
imports Airflow.
"""
