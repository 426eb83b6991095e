"""The node's SQLite store (`sqlite`): call records, the event outbox, idempotency keys."""
