# Shared by the bench scripts: process-group bookkeeping and cleanup on exit. Sourced after
# `log`, `die`, `KEEP_WORK` are defined; sets the EXIT/INT/TERM/ERR traps.
# ---------------------------------------------------------------- cleanup
declare -a STARTED=()        # process-group ids of everything we started (each is setsid'd)
WORK=""
POLICY_RC_CREATED=0
FAILED=1                     # cleared at the very end of a successful run

proc_state() {               # state letter of PID, or "gone"
  local s
  # "return 0", not "return": in the EXIT trap a bare return would return the exit status
  # that triggered the trap, and errexit would end the cleanup half way.
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo gone; return 0; }
  s=${s##*) }
  echo "${s%% *}"
}

forget_group() {             # drop PGID from STARTED
  local rest=() g
  for g in "${STARTED[@]}"; do [[ $g == "$1" ]] || rest+=("$g"); done
  STARTED=("${rest[@]+"${rest[@]}"}")
}

stop_group() {               # stop_group PGID [SIGNAL]: signal the group (TERM), KILL after 10 s; reap
  local pgid=$1 sig=${2:-TERM} deadline st
  kill "-$sig" -- "-$pgid" 2>/dev/null || true
  deadline=$((SECONDS + 10))
  while :; do
    st=$(proc_state "$pgid")
    if [[ $st == Z || $st == gone ]]; then
      wait "$pgid" 2>/dev/null || true
      kill -0 -- "-$pgid" 2>/dev/null || break   # nobody left in the group
    fi
    if ((SECONDS >= deadline)); then
      log "process group $pgid did not stop after $sig; sending KILL"
      kill -KILL -- "-$pgid" 2>/dev/null || true
      wait "$pgid" 2>/dev/null || true
      break
    fi
    sleep 0.01
  done
  forget_group "$pgid"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for g in "${STARTED[@]+"${STARTED[@]}"}"; do stop_group "$g"; done
  if ((POLICY_RC_CREATED)); then rm -f /usr/sbin/policy-rc.d; fi
  if [[ -n $WORK && -d $WORK ]]; then
    if ((FAILED)) || [[ $KEEP_WORK == 1 ]]; then
      log "work dir kept: $WORK (configs and logs)"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'case $BASH_COMMAND in exit*|die*) ;; *) log "failed at line $LINENO: $BASH_COMMAND";; esac' ERR

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

LAST_PGID=""
start_group() {               # start_group CPU LOGFILE CMD...: new session+group, pinned to CPU
  local cpu=$1 logf=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$logf" 2>&1 </dev/null &
  local pid=$!
  STARTED+=("$pid")
  # In a script (no job control) the child is not a group leader, so setsid does not fork:
  # $! is the server's own pid and its process group id.
  local deadline=$((SECONDS + 5)) pg=""
  while ((SECONDS < deadline)); do
    pg=$(awk '{sub(/.*\) /, ""); print $3}' "/proc/$pid/stat" 2>/dev/null || true)
    [[ $pg == "$pid" ]] && break
    [[ $(proc_state "$pid") == gone || $(proc_state "$pid") == Z ]] && break
    sleep 0.01
  done
  LAST_PGID=$pid
}

apt_install() {               # apt_install PKG...: install the missing Debian packages (none: no-op)
  local need=("$@")
  ((${#need[@]})) || return 0
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  [[ $EUID -eq 0 ]] || die "missing packages (${need[*]}) and not root: install them with apt-get"
  command -v apt-get >/dev/null || die "missing packages (${need[*]}) and no apt-get"
  log "installing from Debian: ${need[*]}"
  # Keep the packages' own services (nginx on :80, haproxy, squid, tinyproxy) from starting.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    POLICY_RC_CREATED=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || die "apt-get install ${need[*]} failed"
  if ((POLICY_RC_CREATED)); then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
}
