"""Airflow triggers: they poll remote jobs and never submit, download or pay."""
