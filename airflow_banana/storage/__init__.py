"""Where every lane's results land: objects by URI, the output layout, reports and the gallery.

Modules: ``objects`` (objects by URI, local or ``gs://``, with generation preconditions),
``outputs`` (images/ + metadata/ + runs/{run_key}/ and the one commit protocol every lane uses),
``report`` (the run report, pure) and ``gallery`` (gallery.html next to the report). Nothing here
imports Airflow; google-cloud-storage is imported only when a ``gs://`` URI is opened.
"""
