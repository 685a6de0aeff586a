"""Benchmarks (``make bench`` / ``python -m bench [NAME]``): measured runs, never timed tests.

Every ``bench/<name>.py`` with a ``main()`` is one benchmark; ``python -m bench`` runs them all
in turn and ``python -m bench NAME [args...]`` runs one. Results go to ``bench/results/``
(gitignored); the tables worth keeping are copied into ``docs/benchmarks.md`` with the command.
"""
