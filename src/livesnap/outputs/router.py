"""Routing of storage targets to sinks (design.md §4 "Storage routing").

This first version has the local-disk store only: ``local`` targets are written under
``<data>/storage/<Endpoint>/<Bucket>/``, and OSS/S3 targets fall back to the same place (the
embedded default), which the route says so that jobs and logs can show it.
"""

from __future__ import annotations

from pathlib import Path

from livesnap.outputs.base import Route
from livesnap.outputs.local import LocalSink, safe_segment


class LocalRouter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._routes: dict[tuple[str, str, str], Route] = {}

    def route(self, storage_type: str, endpoint: str, bucket: str) -> Route:
        key = (storage_type, endpoint, bucket)
        if key not in self._routes:
            directory = self.root / safe_segment(endpoint) / safe_segment(bucket)
            self._routes[key] = Route(
                sink=LocalSink(directory),
                description=f"local disk {directory}",
                fallback=storage_type != "local",
            )
        return self._routes[key]
