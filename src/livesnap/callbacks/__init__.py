"""Callbacks: events from the outbox POSTed to each job's CallbackUrl (docs/callbacks.md).

``payload`` renders an event as JSON and ``signing`` signs it (both pure); ``policy`` decides
retries; ``keys`` holds each account's signing key; ``dispatcher`` delivers, at least once.
"""
