"""Capture shards: the jobs one capture process owns (rendezvous hashing, ``assign``), kept
in line with the database and fenced (``runtime``), and the engine that commands them from
another process (``remote``). A node's capture processes and a cluster's Ray actors both run
them; neither Ray nor a network is needed here.
"""
