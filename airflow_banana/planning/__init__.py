"""Deadline planning: which lane each item takes, what it costs, and when a batch job is given up.

One package, one vocabulary. A *plan* (``planner.Plan``) assigns every item of a manifest to a
*lane*: a realtime channel (``LaneCapacity``: finite, per-minute) or a batch backend
(``BatchLane``: unlimited, a *turnaround*), and lists the items no lane can make by their
*deadline*. A batch job still running at its *rescue point* is cancelled so realtime can finish
it. Modules, pure first:

* ``planner``    — the pure planner and the rescue decision (no I/O, ``now`` is an argument);
* ``turnaround`` — the pure turnaround estimate from earlier jobs' durations;
* ``inputs``     — manifest items, durations, channel capacities, success rates and the rescue
  point, turned into the planner's values;
* ``history``    — the batch lane and its turnaround records under the output prefix;
* ``manifest``   — plan a manifest: compute, write the sub-manifests and plan files, dry run;
* ``estimate``   — all-realtime vs all-batch vs the plan, for the CLI.

Nothing here imports Airflow at import time; connections are read only by the entry points that
name them (``manifest.plan_manifest`` / ``dry_run_plan``, through ``hooks.channel``). Routing a single
call at run time is ``routing/``, not this package.
"""
