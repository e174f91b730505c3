"""Scale-out on Ray (docs/cluster.md): the capture shards (``livesnap.shards``) as Ray actors,
and the API node's engine over them.

Only ``cluster/rayengine.py`` imports Ray, and nothing imports it in the embedded mode.

Importing this package sets Ray's defaults for a process that only talks to a cluster, never
overriding the user's values: no usage reporting, and an address of 127.0.0.1 kept as given
(with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` at its Linux default, 1, Ray rewrites it to this
machine's network address). Ray reads that variable once, when it is imported, so it is set
here, before ``rayengine`` imports Ray.
"""

from __future__ import annotations

import os

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

for _name, _value in RAY_ENV.items():
    os.environ.setdefault(_name, _value)
