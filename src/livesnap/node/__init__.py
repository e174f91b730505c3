"""One livesnap node, put together: the edge where concrete adapters are chosen.

``wiring`` builds the parts every engine mode shares (the job manager, the capture supervisor,
the storage router, the callback dispatcher) and the adapters between them; ``service`` serves
the API, console and ``/metrics`` over them; ``capturehost`` runs the capture in child
processes of the node and ``shardhost`` runs one capture shard (in such a child or a Ray
actor); ``httpserver`` is the hardened HTTP/1.1 protocol and ``metrics`` the Prometheus text.
Imports go one way: service → capturehost → shardhost → wiring.
"""
