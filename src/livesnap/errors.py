"""The livesnap exception tree.

Every error a use case can raise is a ``LivesnapError``. The class docstring is the default
message. Only ``livesnap.api`` turns these into ICE ``Code`` / ``Message`` / HTTP status::

    LivesnapError
    ├── InvalidParameter          a parameter is malformed or out of range
    ├── MissingParameter          a required parameter is absent
    ├── NotFound
    │   ├── JobNotFound
    │   └── TemplateNotFound
    ├── Forbidden                 the resource may not be changed (the system template)
    ├── Conflict
    │   ├── JobAlreadyStarted
    │   └── JobNotStarted         capture-now on a job that is not capturing
    ├── JobLimitExceeded          per-account or per-node cap on running jobs
    ├── StreamNotFound            the input stream cannot be opened (not live)
    ├── CaptureTimeout            a capture-now request got no keyframe in time
    ├── StoreError                the database failed (not the caller's fault)
    │   └── FencedOut             a newer instance of this capture shard took over
    ├── ShardUnavailable          the job's capture shard (cluster mode) did not answer
    └── OutputError               object storage failed (``retryable`` is False)
        ├── OutputUnavailable     the store is unreachable or failing (``retryable``: a later
        │                         attempt may succeed, so the capture is spooled)
        ├── VersionConflict       a conditional write found the object changed
        └── OutputFenced          a replaced shard instance's write, refused before the store
"""

from __future__ import annotations


class LivesnapError(Exception):
    """Something went wrong in livesnap."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or type(self).__name__).strip()
        super().__init__(self.message)


class InvalidParameter(LivesnapError):
    """A parameter is invalid."""


class MissingParameter(LivesnapError):
    """A required parameter is missing."""


class NotFound(LivesnapError):
    """The resource does not exist."""


class JobNotFound(NotFound):
    """No such job."""


class TemplateNotFound(NotFound):
    """No such template."""


class Forbidden(LivesnapError):
    """User not authorized to operate on the specified resource."""


class Conflict(LivesnapError):
    """The resource is in a state that does not allow this operation."""


class JobAlreadyStarted(Conflict):
    """Job is already started."""


class JobNotStarted(Conflict):
    """Job is not started."""


class JobLimitExceeded(LivesnapError):
    """Job limit exceeded."""


class StreamNotFound(LivesnapError):
    """No such stream."""


class CaptureTimeout(LivesnapError):
    """No keyframe arrived in time for the capture."""


class StoreError(LivesnapError):
    """The database failed."""


class FencedOut(StoreError):
    """A newer instance of this capture shard has taken over: this one may not write."""


class ClusterMismatch(LivesnapError):
    """A node's setting differs from the one every node of its cluster shares."""


class RebalanceRefused(LivesnapError):
    """The shards were not rebalanced: not every shard is running."""


class ShardUnavailable(LivesnapError):
    """The job's capture shard is starting, moving or was replaced; the command was not
    carried out (the shard applies the job's stored state when it is back)."""


class OutputError(LivesnapError):
    """Object storage failed."""

    #: Whether the same write may succeed later (the spool keeps such captures).
    retryable: bool = False


class OutputUnavailable(OutputError):
    """Object storage is unreachable."""

    retryable = True


class VersionConflict(OutputError):
    """The object changed since this writer last saw it; the conditional write was refused."""


class OutputFenced(OutputError):
    """A newer instance of this capture shard has taken over: this one may not write objects."""
