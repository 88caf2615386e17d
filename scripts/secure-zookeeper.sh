# Sourced by scripts/services: the zookeeper server that requires TLS and authentication.
# Not yet written: every command says so and fails.

secure_start_zookeeper() { log "secure zookeeper: not implemented yet"; return 1; }
secure_stop_zookeeper() { log "secure zookeeper: not implemented yet"; return 1; }
secure_status_zookeeper() { log "secure zookeeper: not implemented yet"; return 1; }
