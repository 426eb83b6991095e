"""Webhooks: events of the node's outbox POSTed, signed, to subscribers' URLs."""
