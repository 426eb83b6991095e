"""Events: their schema (`schema`: types, ids, timestamps, command errors) and the outbox
publisher that sends them over MQTT and serves MQTT commands (`publisher`)."""
