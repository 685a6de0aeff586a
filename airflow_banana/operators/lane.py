"""``ManifestLaneOperator``: what every image lane operator shares — a manifest in, an output prefix out.

The realtime and batch operators take the same manifest and output arguments, check them the
same way, prepare the manifest the same way and publish the same run (gallery, Asset event,
failure limits). One base class keeps
them alike, so each lane operator's own file holds only its lane's arguments and lifecycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_banana.exceptions import ConfigurationError
from airflow_banana.operators._common import checked_max_rejected, logical_date_of
from airflow_banana.operators.publish import add_output_outlet, finish_run

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_banana.manifests.prepare import PreparedManifest
    from airflow_banana.storage.objects import Storage
    from airflow_banana.storage.outputs import OutputStore
    from airflow_banana.storage.report import ItemOutcome


class ManifestLaneOperator(BaseOperator):
    """Base of the lane operators; the arguments every lane takes:

    :param manifest: URI of the prompt manifest (``gs://…`` or a local path), JSONL or JSON.
    :param output_prefix: URI under which ``images/``, ``metadata/`` and ``runs/`` are written.
    :param gcp_conn_id: connection with GCS credentials; default: Application Default Credentials.
    :param defaults: item field defaults (below the manifest's own defaults).
    :param on_invalid: ``reject`` (fail on any bad line, nothing spent) or ``quarantine``
        (write bad lines to ``rejects.jsonl`` and go on).
    :param force: regenerate items even if already done with the same request fingerprint, and
        replace the image of another request under the same id (without it such an item fails
        before any call: an id names one image per output prefix).
    :param max_failed_items: the task fails when more items than this end without an image
        (after the report is written); a retry then pays only for those items.
    :param max_rejected_items: with ``on_invalid="quarantine"``, the task fails (after the report)
        when more manifest lines than this were rejected; default ``None``: any number while
        something valid is left, none when every line was rejected.
    :param emit_output_asset: add the output prefix's Asset to the outlets (an alias when the
        prefix is templated; ``airflow_banana.operators.assets``); every outlet's event gets the run's
        counts, spend, report and gallery URIs as ``extra`` (recorded by Airflow when the task
        succeeds). Other ``outlets`` may be given too.

    The ``Gallery`` extra link opens ``runs/{run_key}/gallery.html`` (docs/gallery.md).
    """

    def __init__(
        self,
        *,
        manifest: str,
        output_prefix: str,
        gcp_conn_id: str | None = None,
        defaults: Mapping[str, Any] | None = None,
        on_invalid: str = "reject",
        force: bool = False,
        max_failed_items: int = 0,
        max_rejected_items: int | None = None,
        emit_output_asset: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if emit_output_asset:
            add_output_outlet(self, output_prefix)
        self.gallery_uri: str | None = None  # set when the run is published (GalleryLink)
        self.manifest = manifest
        self.output_prefix = output_prefix
        self.gcp_conn_id = gcp_conn_id
        self.defaults = dict(defaults or {})
        self.on_invalid = on_invalid
        self.force = force
        self.max_failed_items = max_failed_items
        self.max_rejected_items = checked_max_rejected(max_rejected_items, task_id=self.task_id)
        if on_invalid not in ("reject", "quarantine"):
            raise ConfigurationError(
                f"{self.task_id}: on_invalid must be 'reject' or 'quarantine', got {on_invalid!r}"
            )

    def prepare(self, context: Context, storage: Storage) -> PreparedManifest:
        """The manifest read and checked, reference images loaded: every check before spend."""
        from airflow_banana.manifests.prepare import prepare_manifest

        return prepare_manifest(
            self.manifest,
            storage,
            on_invalid=self.on_invalid,  # type: ignore[arg-type]
            defaults=self.defaults,
            logical_date=logical_date_of(context),
        )

    def finish_run(
        self,
        context: Context,
        store: OutputStore,
        report: Mapping[str, Any],
        *,
        outcomes: Iterable[ItemOutcome],
        prepared: PreparedManifest,
    ) -> dict[str, Any]:
        """Write the report, publish the run, apply this task's failure limits (``publish``)."""
        return finish_run(
            self,
            context,
            store,
            report,
            outcomes=outcomes,
            prepared=prepared,
            output_prefix=self.output_prefix,
            max_failed_items=self.max_failed_items,
            max_rejected_items=self.max_rejected_items,
        )
