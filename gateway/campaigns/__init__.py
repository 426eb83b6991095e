"""Outbound campaigns: the model and decisions (model.py) and their durable state (store.py);
gateway/node/campaigns.py runs them."""
