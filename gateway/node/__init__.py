"""The node (supervisor) process: the node itself (`supervisor`), operations shared by MQTT and
the HTTP API, the ledger (worker events -> call records and outbox), the embedded mosquitto
(`broker`) and the check that its ports are free (`ports`)."""
