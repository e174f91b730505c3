"""In-memory sink (tests and demos)."""

from __future__ import annotations

from livesnap.errors import OutputError
from livesnap.outputs.base import ObjectMeta


class MemorySink:
    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, ObjectMeta]] = {}
        self.fail_with: str | None = None  # set to make every call fail (fault tests)

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        if self.fail_with:
            raise OutputError(self.fail_with)
        self.objects[key] = (data, meta)

    async def delete(self, key: str) -> None:
        if self.fail_with:
            raise OutputError(self.fail_with)
        self.objects.pop(key, None)
