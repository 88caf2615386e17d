# Sourced by scripts/services: the etcd server that requires TLS and authentication, for
# tests/security_etcd.rs. Apart from the plain etcd on 2379, which it never touches.
#
# - Debian's etcd 3.4, one member on loopback: client https://127.0.0.1:23790, peer
#   http://127.0.0.1:23800 (FAIRLOCK_SECURE_ETCD_PORT moves both: peer = client + 10);
#   data, log, PID and passwords under .services/secure-etcd/.
# - TLS with .services/certs/server.pem; clients must present a certificate signed by the
#   test CA (--client-cert-auth). etcd then takes the certificate's CN as the RBAC user
#   when a request carries no token.
# - RBAC (auth enabled), set up idempotently:
#     root                 password in .services/secure-etcd/root.password
#     fairlock             password in .services/secure-etcd/fairlock.password, role
#                          fairlock-rw: readwrite on the key prefix "fairlock-secure/" only,
#                          and on "apps/" (the neutral data keys of the conformance suite)
#     other                password in .services/secure-etcd/other.password, no role
# - Simple tokens that expire after 3 s of disuse (--auth-token-ttl 3; etcd 3.4 extends a
#   simple token on every use), so the tests see a long-running client outlive its token.
#   (The alternative, --auth-token jwt, needs signing keys and has a fixed lifetime.)

secure_etcd_dir="$state/secure-etcd"
secure_etcd_port=${FAIRLOCK_SECURE_ETCD_PORT:-23790}
secure_etcd_peer_port=$((secure_etcd_port + 10))
secure_etcd_prefix="fairlock-secure/"

# etcdctl over TLS with the test CA and the CN=fairlock client certificate, as root.
secure_etcdctl() {
  local certs="$state/certs"
  ETCDCTL_API=3 timeout 10 etcdctl --endpoints "https://127.0.0.1:$secure_etcd_port" \
    --dial-timeout 3s --command-timeout 5s --cacert "$certs/ca.pem" \
    --cert "$certs/client.pem" --key "$certs/client-key.pem" "$@"
}

secure_etcd_ready() {
  # /health needs no user, even with auth enabled.
  secure_etcdctl endpoint health >/dev/null 2>&1
}

# A password file with a random password, unless it exists.
secure_etcd_password() {
  local file="$secure_etcd_dir/$1.password"
  if [ ! -s "$file" ]; then
    (umask 077; openssl rand -hex 16 >"$file")
  fi
  cat "$file"
}

secure_etcd_pid() {
  local f="$secure_etcd_dir/pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
  return 0
}

# Users, role and grant; `auth enable` last. Safe to repeat: whatever exists is kept, the
# passwords are set again from their files.
secure_etcd_rbac() {
  local root_pw fl_pw other_pw as_root=()
  root_pw=$(secure_etcd_password root)
  fl_pw=$(secure_etcd_password fairlock)
  other_pw=$(secure_etcd_password other)
  # Once auth is enabled, listing users needs root: the client certificate alone (CN
  # fairlock) is refused. (etcdctl 3.4 has no `auth status`, and `--user root:…` is no
  # test: etcdctl falls back to no authentication while auth is off.)
  if ! secure_etcdctl user list >/dev/null 2>&1; then
    as_root=(--user "root:$root_pw")
  fi
  local ctl=(secure_etcdctl "${as_root[@]}")
  "${ctl[@]}" user get root >/dev/null 2>&1 \
    || "${ctl[@]}" user add root --new-user-password "$root_pw" >/dev/null
  "${ctl[@]}" user grant-role root root >/dev/null 2>&1 || true
  for user in fairlock other; do
    "${ctl[@]}" user get "$user" >/dev/null 2>&1 \
      || "${ctl[@]}" user add "$user" --new-user-password "$(secure_etcd_password "$user")" >/dev/null
  done
  # Passwords follow their files (the files may have been made anew).
  "${ctl[@]}" user passwd fairlock --interactive=false <<<"$fl_pw" >/dev/null
  "${ctl[@]}" user passwd other --interactive=false <<<"$other_pw" >/dev/null
  "${ctl[@]}" role get fairlock-rw >/dev/null 2>&1 || "${ctl[@]}" role add fairlock-rw >/dev/null
  "${ctl[@]}" role grant-permission fairlock-rw --prefix=true readwrite "$secure_etcd_prefix" >/dev/null
  "${ctl[@]}" role grant-permission fairlock-rw --prefix=true readwrite apps/ >/dev/null
  "${ctl[@]}" user grant-role fairlock fairlock-rw >/dev/null
  [ ${#as_root[@]} -gt 0 ] || secure_etcdctl auth enable >/dev/null
  log "secure etcd: RBAC ready (users root, fairlock, other; role fairlock-rw on $secure_etcd_prefix and apps/)"
}

secure_start_etcd() {
  mkdir -p "$secure_etcd_dir"
  if [ -z "$(secure_etcd_pid)" ]; then
    if (exec 3<>"/dev/tcp/127.0.0.1/$secure_etcd_port") 2>/dev/null; then
      log "secure etcd: port $secure_etcd_port is in use by another process"; return 1
    fi
    local certs="$state/certs" url="https://127.0.0.1:$secure_etcd_port"
    local peer="http://127.0.0.1:$secure_etcd_peer_port"
    setsid etcd --name fairlock-secure --data-dir "$secure_etcd_dir/data" \
      --listen-client-urls "$url" --advertise-client-urls "$url" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "fairlock-secure=$peer" \
      --cert-file "$certs/server.pem" --key-file "$certs/server-key.pem" \
      --trusted-ca-file "$certs/ca.pem" --client-cert-auth \
      --auth-token simple --auth-token-ttl 3 --bcrypt-cost 4 \
      >>"$secure_etcd_dir/log" 2>&1 </dev/null &
    echo $! >"$secure_etcd_dir/pid"
  else
    log "secure etcd already running (pid $(secure_etcd_pid))"
  fi
  local i
  for i in $(seq 1 120); do
    secure_etcd_ready && break
    if [ -z "$(secure_etcd_pid)" ]; then
      log "secure etcd exited; its log:"; tail -20 "$secure_etcd_dir/log" >&2; return 1
    fi
    [ "$i" = 120 ] && { log "secure etcd not ready after 60 s"; tail -20 "$secure_etcd_dir/log" >&2; return 1; }
    sleep 0.5
  done
  log "secure etcd ready on https://127.0.0.1:$secure_etcd_port"
  secure_etcd_rbac
}

secure_stop_etcd() {
  local pid
  pid=$(secure_etcd_pid)
  if [ -z "$pid" ]; then log "secure etcd not running"; rm -f "$secure_etcd_dir/pid"; return 0; fi
  kill "$pid"
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$secure_etcd_dir/pid"
  log "secure etcd stopped"
}

secure_status_etcd() {
  if [ -n "$(secure_etcd_pid)" ] && secure_etcd_ready; then
    echo "secure etcd: up on https://127.0.0.1:$secure_etcd_port (pid $(secure_etcd_pid))"
  else
    echo "secure etcd: down"
  fi
}
