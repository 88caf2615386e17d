# Sourced by scripts/services: the etcd server that requires TLS and authentication.
# Not yet written: every command says so and fails.

secure_start_etcd() { log "secure etcd: not implemented yet"; return 1; }
secure_stop_etcd() { log "secure etcd: not implemented yet"; return 1; }
secure_status_etcd() { log "secure etcd: not implemented yet"; return 1; }
