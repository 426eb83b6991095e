"""Events: their schema (`schema`: types, ids, timestamps, command errors), the commands a
control plane sends (`commands`: arguments and request limits, for MQTT and HTTP alike) and the
outbox publisher that sends events over MQTT and serves MQTT commands (`publisher`)."""
