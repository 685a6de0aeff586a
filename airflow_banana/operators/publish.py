"""What a finished realtime or batch run leaves for people and DAGs besides its images.

After the report is written: the gallery page next to it, the small XCom summary, and the
run's Asset event (``airflow_banana.operators.assets``). The ``GalleryLink`` extra link opens the page,
``BatchJobLink`` the batch job in Google's console.
One function for both lanes, so the two stay alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink

from airflow_banana.operators._common import enforce_item_limits, summary_for_xcom
from airflow_banana.operators.assets import default_outlets, record_run_event
from airflow_banana.storage.gallery import browser_url, write_gallery

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from airflow_banana.manifests.prepare import PreparedManifest
    from airflow_banana.storage.outputs import OutputStore
    from airflow_banana.storage.report import ItemOutcome


class GalleryLink(BaseOperatorLink):
    """The run's gallery.html: a ``gs://`` object's authenticated URL, or a local ``file://`` URL."""

    name = "Gallery"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        uri = getattr(operator, "gallery_uri", None)
        return browser_url(uri) if uri else ""


def finish_run(
    operator: BaseOperator,
    context: Context,
    store: OutputStore,
    report: Mapping[str, Any],
    *,
    outcomes: Iterable[ItemOutcome],
    prepared: PreparedManifest,
    output_prefix: str,
    max_failed_items: int,
    max_rejected_items: int | None,
) -> dict[str, Any]:
    """Write the report, publish the run (``publish_run``), then apply the task's failure limits
    (``enforce_item_limits`` raises past them); returns the XCom summary."""
    report_uri = store.write_report(report["run_key"], report)
    operator.log.info("%s report: %s", report["summary"], report_uri)
    summary = publish_run(
        operator,
        context,
        store,
        report=report,
        report_uri=report_uri,
        outcomes=outcomes,
        prepared=prepared,
        output_prefix=output_prefix,
    )
    enforce_item_limits(
        report,
        report_uri,
        task_id=operator.task_id,
        max_failed_items=max_failed_items,
        max_rejected_items=max_rejected_items,
    )
    return summary


class BatchJobLink(BaseOperatorLink):
    """The batch job in the Google console (Vertex) or AI Studio's batch list (Developer API)."""

    name = "Batch job"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return str(getattr(operator, "console_url", "") or "")


def push_link(context: Context, link: BaseOperatorLink, url: str, *, log: Any) -> None:
    """Show ``link`` while the task is deferred (Airflow pushes it again when the task ends)."""
    try:
        context["ti"].xcom_push(key=link.xcom_key, value=url)
    except Exception:  # a link is a convenience; it never fails the task
        log.debug("could not push the %s link", link.name, exc_info=True)


def add_output_outlet(operator: BaseOperator, output_prefix: str) -> None:
    """Add the output prefix's Asset (or its alias) to the operator's outlets, once.

    A flag, not a default of ``outlets``: mapped operators (``partial().expand()``) take
    BaseOperator's own ``outlets`` default, and run ``__init__`` (so this) when unmapped.
    """
    dag_id = operator.dag_id if operator.has_dag() else None
    outlets = default_outlets(output_prefix, dag_id=dag_id, task_id=operator.task_id)
    operator.add_outlets(o for o in outlets if o not in operator.outlets)


def publish_run(
    operator: BaseOperator,
    context: Context,
    store: OutputStore,
    *,
    report: Mapping[str, Any],
    report_uri: str,
    outcomes: Iterable[ItemOutcome],
    prepared: PreparedManifest,
    output_prefix: str,
) -> dict[str, Any]:
    """Write the gallery, set ``operator.gallery_uri`` for the link, record the Asset event's
    extra; returns the XCom summary (with ``gallery_uri`` when the page was written)."""
    gallery_uri = write_gallery(
        store,
        report["run_key"],
        report,
        outcomes,
        [w.request for w in prepared.work],
        rejects_jsonl=prepared.rejects_jsonl,
    )
    operator.gallery_uri = gallery_uri
    summary = summary_for_xcom(report, report_uri)
    if gallery_uri:
        summary["gallery_uri"] = gallery_uri
    record_run_event(
        context,
        operator.outlets,
        output_prefix=output_prefix,
        # every image's URI stays in XCom: an event's extra is a row in the metadata DB
        extra={
            **{k: v for k, v in summary.items() if k != "images"},
            "lane": report["lane"],
            "output_prefix": output_prefix,
        },
    )
    return summary
