#!/usr/bin/env bash
# A private sshd on 127.0.0.1 for the tests of the ssh launcher: its own
# host key, a client key authorised for the current user, a config that
# listens on loopback only. Idempotent: a running one is reused.
#
#   eval "$(scripts/sshd.sh start)"   # exports WPOOL_TEST_SSH="ssh -F … wpool-test"
#   scripts/sshd.sh stop              # stops exactly what start started
#
# stdout carries only `export` lines; diagnostics go to stderr. Installs
# openssh-server when missing (needs root for that and for sshd itself).
# Knobs: WPOOL_SSHD_DIR (state, default /tmp/wpool-sshd), WPOOL_SSHD_PORT
# (default 16822).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
DIR=${WPOOL_SSHD_DIR:-/tmp/wpool-sshd}
PORT=${WPOOL_SSHD_PORT:-16822}
say() { printf 'sshd.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

running() {
  [ -s "$DIR/sshd.pid" ] || return 1
  local pid; pid=$(cat "$DIR/sshd.pid")
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$DIR/sshd_config"
}

emit() { printf 'export WPOOL_TEST_SSH=%q\n' "ssh -F $DIR/ssh_config wpool-test"; }

case "${1:-}" in
  start)
    if running; then emit; exit 0; fi
    [ "$(id -u)" = 0 ] || die "needs root (sshd with its privilege-separation directory)"
    if ! command -v sshd >/dev/null; then
      say "installing openssh-server"
      export DEBIAN_FRONTEND=noninteractive
      if ! apt-cache policy openssh-server 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        apt-get update -q >&2
      fi
      apt-get install -y -q --no-install-recommends openssh-server openssh-client >&2
    fi
    mkdir -p "$DIR" /run/sshd
    chmod 700 "$DIR"
    [ -f "$DIR/host_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_key" >&2
    [ -f "$DIR/client_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/client_key" >&2
    cp "$DIR/client_key.pub" "$DIR/authorized_keys"
    printf '[127.0.0.1]:%s %s\n' "$PORT" "$(cut -d' ' -f1,2 "$DIR/host_key.pub")" >"$DIR/known_hosts"
    cat >"$DIR/sshd_config" <<EOF
Port $PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_key
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
EOF
    cat >"$DIR/ssh_config" <<EOF
Host wpool-test
  HostName 127.0.0.1
  Port $PORT
  User $(id -un)
  IdentityFile $DIR/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $DIR/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
EOF
    # sshd daemonizes itself; it keeps no fd of ours (a caller's pipe).
    "$(command -v sshd)" -f "$DIR/sshd_config" -E "$DIR/sshd.log" </dev/null >/dev/null 2>&1 \
      || die "sshd did not start: $(tail -3 "$DIR/sshd.log" 2>/dev/null)"
    for _ in $(seq 1 100); do
      if ssh -F "$DIR/ssh_config" wpool-test true </dev/null 2>/dev/null; then
        say "sshd on 127.0.0.1:$PORT (state in $DIR)"
        emit
        exit 0
      fi
      sleep 0.1
    done
    die "sshd on 127.0.0.1:$PORT does not accept our key: $(tail -3 "$DIR/sshd.log" 2>/dev/null)"
    ;;
  stop)
    if running; then
      kill "$(cat "$DIR/sshd.pid")"
      say "stopped"
    fi
    rm -rf "$DIR"
    ;;
  *)
    die "usage: sshd.sh start|stop"
    ;;
esac
