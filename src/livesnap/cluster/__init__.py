"""Scale-out on Ray (docs/cluster.md): the capture shards (``livesnap.shards``) as Ray actors,
and the API node's engine over them.

Only ``cluster/rayengine.py`` imports Ray, and nothing imports it in the embedded mode.
"""
