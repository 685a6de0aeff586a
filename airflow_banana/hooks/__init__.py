"""Airflow hooks of airflow_banana: connections in, channels out (no SDK import here)."""

from __future__ import annotations

from airflow_banana.hooks.channel import BananaChannelHook

__all__ = ["BananaChannelHook"]
