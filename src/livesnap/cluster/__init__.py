"""Scale-out on Ray (docs/cluster.md): capture shards, job → shard assignment, the API's engine.

Only ``cluster/rayengine.py`` imports Ray, and nothing imports it in the embedded mode.
"""
