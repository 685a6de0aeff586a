"""The benchmarks' CI-sized samples: run in the bench venv (``make test`` does), where the peers live."""
