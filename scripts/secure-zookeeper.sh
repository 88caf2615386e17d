# Sourced by scripts/services: a second single ZooKeeper 3.8 for the TLS/auth suites
# (tests/security_zookeeper.rs), apart from the plain one on 2181 (never touched here).
#
# - Data, config, log and PID under .services/secure-zk/.
# - Secure client port 127.0.0.1:21811 (FAIRLOCK_SECURE_ZK_PORT): TLS through Netty
#   (serverCnxnFactory=NettyServerCnxnFactory), the server certificate from scripts/certs
#   (server.pem, CN=localhost, SAN localhost and 127.0.0.1), and mutual TLS required
#   (ssl.clientAuth=need): clients must present a certificate signed by ca.pem.
# - Plain client port 127.0.0.1:21812 (FAIRLOCK_SECURE_ZK_PLAIN_PORT): for digest
#   authentication without TLS, and the readiness check (ruok).
# - Key and trust stores are PEM (ssl.keyStore.type=PEM): the keystore is server-key.pem
#   and server.pem concatenated into .services/secure-zk/keystore.pem.
# - Authentication is enforced (zookeeper.enforce.auth.enabled, schemes digest and x509):
#   a session with neither digest credentials nor a client certificate is refused with
#   AuthFailed at its first request. Digest needs no server set-up: the server accepts any
#   user:password and makes it the identity digest:user:HASH, which node ACLs then grant or
#   refuse. A client certificate is the identity x509:CN=… (the X509 provider, registered
#   explicitly). No super user is configured.

sz_dir="$state/secure-zk"
sz_port=${FAIRLOCK_SECURE_ZK_PORT:-21811}
sz_plain_port=${FAIRLOCK_SECURE_ZK_PLAIN_PORT:-21812}

sz_pid() {
  [ -f "$sz_dir/pid" ] && kill -0 "$(cat "$sz_dir/pid")" 2>/dev/null && cat "$sz_dir/pid"
  return 0
}

sz_ready() {
  local answer
  answer=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$sz_plain_port; printf ruok >&3; cat <&3" \
    2>/dev/null || true)
  [ "$answer" = imok ] && (exec 3<>"/dev/tcp/127.0.0.1/$sz_port") 2>/dev/null
}

secure_start_zookeeper() {
  if [ -n "$(sz_pid)" ] && sz_ready; then
    log "secure zookeeper already running (tls 127.0.0.1:$sz_port, plain 127.0.0.1:$sz_plain_port)"
    return 0
  fi
  local port certs="$state/certs"
  for port in "$sz_port" "$sz_plain_port"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "secure zookeeper: port $port is in use by another process;" \
        "set FAIRLOCK_SECURE_ZK_PORT / FAIRLOCK_SECURE_ZK_PLAIN_PORT"
      return 1
    fi
  done
  mkdir -p "$sz_dir/data"
  (umask 077; cat "$certs/server-key.pem" "$certs/server.pem" >"$sz_dir/keystore.pem")
  cat >"$sz_dir/zoo.cfg" <<CFG
tickTime=1000
dataDir=$sz_dir/data
clientPort=$sz_plain_port
clientPortAddress=127.0.0.1
secureClientPort=$sz_port
secureClientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=*
minSessionTimeout=2000
maxSessionTimeout=60000
CFG
  # The TLS settings as system properties (zookeeper.*), as ZooKeeper's docs give them.
  # The Netty jars that zookeeper.jar's manifest does not list (codec, resolver, unix).
  setsid java -Xmx256m -Dzookeeper.log.dir="$sz_dir" \
    -Dzookeeper.serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory \
    -Dzookeeper.ssl.keyStore.location="$sz_dir/keystore.pem" -Dzookeeper.ssl.keyStore.type=PEM \
    -Dzookeeper.ssl.trustStore.location="$certs/ca.pem" -Dzookeeper.ssl.trustStore.type=PEM \
    -Dzookeeper.ssl.clientAuth=need \
    -Dzookeeper.authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider \
    -Dzookeeper.enforce.auth.enabled=true -Dzookeeper.enforce.auth.schemes=digest,x509 \
    -cp "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar:/usr/share/java/netty-transport-native-unix-common.jar" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$sz_dir/zoo.cfg" \
    >"$sz_dir/log" 2>&1 </dev/null &
  echo $! >"$sz_dir/pid"
  wait_until secure-zk sz_ready "$sz_dir/pid" \
    && log "secure zookeeper: tls 127.0.0.1:$sz_port, plain 127.0.0.1:$sz_plain_port"
}

secure_stop_zookeeper() {
  local pid
  pid=$(sz_pid)
  if [ -z "$pid" ]; then log "secure zookeeper not running"; rm -f "$sz_dir/pid"; return 0; fi
  kill "$pid"
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$sz_dir/pid"
  log "secure zookeeper stopped"
}

secure_status_zookeeper() {
  local pid
  pid=$(sz_pid)
  if [ -n "$pid" ] && sz_ready; then
    echo "secure zookeeper: running (pid $pid), tls 127.0.0.1:$sz_port, plain 127.0.0.1:$sz_plain_port"
  elif [ -n "$pid" ]; then
    echo "secure zookeeper: started (pid $pid), not answering"
  else
    echo "secure zookeeper: not running"
  fi
}
