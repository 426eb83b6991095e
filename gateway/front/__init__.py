"""The SIP front: Kamailio in front of the node's pjsua2 workers (config template and its
rendering, the process, its health and counters)."""
