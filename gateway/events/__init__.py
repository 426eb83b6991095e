"""Events: their schema (`schema`: types, ids, timestamps, command errors), the commands a
control plane sends (`commands`: arguments and request limits, for MQTT and HTTP alike), the
outbox as a contract the store fulfils (`outbox`) and the publisher that sends the outbox over
MQTT and serves MQTT commands (`publisher`)."""
