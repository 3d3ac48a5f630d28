#!/usr/bin/env bash
# A throw-away multi-node Slurm cluster on ONE Debian/Ubuntu machine, loopback only, for tests.
#
#   scripts/slurm_cluster.sh up       install (apt) if needed, start munge, slurmctld, N slurmd
#   scripts/slurm_cluster.sh down     cancel its jobs, stop exactly what `up` started (by PID),
#                                     remove the /etc/hosts lines it added
#   scripts/slurm_cluster.sh status   sinfo + squeue of this cluster
#   scripts/slurm_cluster.sh env      print `export SLURM_CONF=...` for this cluster
#
# Needs root (apt-get, munge, slurmd as root, /etc/hosts, `unshare --uts`).
#
# Shape:
#   slurmctld on 127.0.0.1:$SLURM_CI_PORT; node I ("${SLURM_CI_NODE_PREFIX}I") is a slurmd
#   listening on 127.0.0.1I:$((SLURM_CI_PORT + I)), in its own UTS namespace, so `hostname` in
#   a job on node I prints that node's name (torchrun's c10d rendezvous needs distinct host
#   names). Node names resolve through lines added to /etc/hosts (tagged, removed by `down`).
#   Each node *claims* SLURM_CI_CPUS CPUs, SLURM_CI_MEM_MB of memory and SLURM_CI_GPUS fake
#   GPUs (character devices cloned from /dev/null), so GPU-shaped `#SBATCH` headers
#   (--gpus-per-node=8 --exclusive --mem=0) are accepted; jobs really share this host's CPUs.
#   Requeue latency is cut to ~35 s (cred_expire=30, sched/bf interval 5 s).
#
# Everything lives under $SLURM_CI_DIR (config, state, logs, spool, pid files, and `started`:
# the PIDs this script started). The config is $SLURM_CI_DIR/slurm.conf, never /etc/slurm:
# export SLURM_CONF (see `env`) for sbatch/squeue/scontrol; jobs inherit it.
#
# Knobs (environment):
#   SLURM_CI_DIR          /tmp/nextlat-slurm-ci
#   SLURM_CI_NODES        2 (1..9)
#   SLURM_CI_PORT         6817 (slurmctld; slurmd I uses PORT+I)
#   SLURM_CI_NODE_PREFIX  cinode
#   SLURM_CI_CPUS         16         claimed per node
#   SLURM_CI_MEM_MB       64000      claimed per node
#   SLURM_CI_GPUS         8          fake GPUs per node (0: no gres)
#   SLURM_CI_NO_INSTALL   1: never run apt-get
# Exit codes: 0 ok, 1 error, 2 usage, 3 Slurm is missing and cannot be installed (no apt-get,
# apt failed, or SLURM_CI_NO_INSTALL=1).
set -euo pipefail

BASE=${SLURM_CI_DIR:-/tmp/nextlat-slurm-ci}
NODES=${SLURM_CI_NODES:-2}
PORT=${SLURM_CI_PORT:-6817}
PREFIX=${SLURM_CI_NODE_PREFIX:-cinode}
CPUS=${SLURM_CI_CPUS:-16}
MEM=${SLURM_CI_MEM_MB:-64000}
GPUS=${SLURM_CI_GPUS:-8}
CONF=$BASE/slurm.conf
STARTED=$BASE/started          # "<pid> <name>" per line: what `down` may stop
HOSTS_TAG="# nextlat-slurm-ci $BASE"

say() { echo "slurm_cluster: $*"; }
die() { echo "slurm_cluster: error: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "must run as root (apt-get, munge, slurmd, /etc/hosts)"; }

port_busy() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

alive() {  # alive PID NAME: the process exists and is still that program
  [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

node_name() { echo "$PREFIX$1"; }
node_addr() { echo "127.0.0.1$1"; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return
  fi
  # exit code 3: Slurm cannot be had here (tests skip on it; every other failure is an error)
  [ "${SLURM_CI_NO_INSTALL:-0}" = 1 ] && { echo "slurm_cluster: Slurm is not installed and SLURM_CI_NO_INSTALL=1" >&2; exit 3; }
  command -v apt-get >/dev/null || { echo "slurm_cluster: Slurm is not installed and there is no apt-get" >&2; exit 3; }
  say "installing slurmctld slurmd slurm-client munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || { echo "slurm_cluster: apt-get update failed" >&2; exit 3; }
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { echo "slurm_cluster: apt-get install slurmctld slurmd slurm-client munge failed" >&2; exit 3; }
}

start_munge() {
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then  # Debian's postinst normally made one
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munge: reusing the running munged (not ours: left alone by down)"
    return
  fi
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || die "munged did not start"
  echo "$(cat /run/munge/munged.pid) munged" >> "$STARTED"
}

add_hosts() {
  local i name addr
  for i in $(seq 1 "$NODES"); do
    name=$(node_name "$i"); addr=$(node_addr "$i")
    if grep -qE "^[0-9.]+[[:space:]]+${name}([[:space:]]|\$)" /etc/hosts; then
      grep -qE "^${addr//./\\.}[[:space:]]+${name}([[:space:]]|\$)" /etc/hosts \
        || die "/etc/hosts already maps $name to another address; set SLURM_CI_NODE_PREFIX"
      continue
    fi
    # Append in place (/etc/hosts may be a bind mount: no rename).
    echo "$addr $name $HOSTS_TAG" >> /etc/hosts
  done
}

remove_hosts() {
  [ -f /etc/hosts ] && grep -qF "$HOSTS_TAG" /etc/hosts || return 0
  local kept
  kept=$(grep -vF "$HOSTS_TAG" /etc/hosts || true)
  printf '%s\n' "$kept" > /etc/hosts
}

write_conf() {
  local i gres_line="" gres_types="" first_job
  mkdir -p "$BASE"/{state,log}
  for i in $(seq 1 "$NODES"); do mkdir -p "$BASE/spool/$(node_name "$i")"; done
  if [ "$GPUS" -gt 0 ]; then
    mkdir -p "$BASE/fakegpu"
    for g in $(seq 0 $((GPUS - 1))); do
      [ -e "$BASE/fakegpu/gpu$g" ] || mknod -m 666 "$BASE/fakegpu/gpu$g" c 1 3
    done
    echo "Name=gpu File=$BASE/fakegpu/gpu[0-$((GPUS - 1))]" > "$BASE/gres.conf"
    gres_line="Gres=gpu:$GPUS"; gres_types="GresTypes=gpu"
  fi
  # Job ids differ between clusters (and so do the job-derived rendezvous ports).
  first_job=$(( (RANDOM % 900 + 100) * 1000 ))
  cat > "$CONF" <<CONF
# written by nextlat_pt scripts/slurm_cluster.sh (throw-away test cluster)
ClusterName=nextlatci
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again only cred_expire seconds later (default 120)
AuthInfo=cred_expire=30
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# look at pending (e.g. requeued) jobs every 5 s instead of every 30/60 s
SchedulerParameters=bf_interval=5,sched_interval=5
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait=10
FirstJobId=$first_job
SlurmdParameters=config_overrides
$gres_types
NodeName=DEFAULT CPUs=$CPUS RealMemory=$MEM $gres_line State=UNKNOWN
CONF
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") Port=$((PORT + i))" >> "$CONF"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
}

cmd_up() {
  need_root
  [ "$NODES" -ge 1 ] && [ "$NODES" -le 9 ] || die "SLURM_CI_NODES must be 1..9"
  if [ -s "$STARTED" ]; then
    while read -r pid name; do
      alive "$pid" "$name" && die "a cluster from $BASE is still running ($name $pid); run down"
    done < "$STARTED"
  fi
  local p
  for p in "127.0.0.1:$PORT" $(for i in $(seq 1 "$NODES"); do
      echo "$(node_addr "$i"):$((PORT + i))"; done); do
    port_busy "${p%:*}" "${p#*:}" && die "port $p is in use (set SLURM_CI_PORT)"
  done
  command -v unshare >/dev/null || die "unshare (util-linux) is missing"
  [ -d /sys/fs/cgroup ] || die "/sys/fs/cgroup is not mounted: slurmd 22.05 refuses to start"
  install_packages
  rm -rf "$BASE/state" "$BASE/spool" "$BASE/log"
  mkdir -p "$BASE"
  : > "$STARTED"
  start_munge
  add_hosts
  write_conf
  export SLURM_CONF=$CONF

  slurmctld -f "$CONF"
  for _ in $(seq 50); do [ -s "$BASE/slurmctld.pid" ] && break; sleep 0.1; done
  [ -s "$BASE/slurmctld.pid" ] || { tail -n 20 "$BASE/log/slurmctld.log" >&2; die "slurmctld did not start"; }
  echo "$(cat "$BASE/slurmctld.pid") slurmctld" >> "$STARTED"
  local i name
  for i in $(seq 1 "$NODES"); do
    name=$(node_name "$i")
    unshare --uts sh -c "hostname '$name' && exec slurmd -f '$CONF' -N '$name'"
    for _ in $(seq 50); do [ -s "$BASE/slurmd-$name.pid" ] && break; sleep 0.1; done
    [ -s "$BASE/slurmd-$name.pid" ] || { tail -n 20 "$BASE/log/slurmd-$name.log" >&2; die "slurmd $name did not start"; }
    echo "$(cat "$BASE/slurmd-$name.pid") slurmd" >> "$STARTED"
  done

  for _ in $(seq 120); do
    [ "$(sinfo -h -N -o '%t' 2>/dev/null | grep -c '^idle$')" -eq "$NODES" ] && break
    sleep 0.5
  done
  if [ "$(sinfo -h -N -o '%t' | grep -c '^idle$')" -ne "$NODES" ]; then
    sinfo -N >&2 || true; tail -n 20 "$BASE"/log/*.log >&2 || true
    die "not every node became idle"
  fi
  sinfo -N -o '%N %t %c %m %G'
  say "up: $NODES nodes; export SLURM_CONF=$CONF"
}

cmd_down() {
  need_root
  export SLURM_CONF=$CONF
  if [ -s "$STARTED" ] && [ -f "$CONF" ]; then
    local jobs
    jobs=$(squeue -h -o '%A' 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 60); do [ -z "$(squeue -h -o '%A' 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  if [ -s "$STARTED" ]; then
    local pid name
    # slurmd first, then slurmctld, then munged (the order they depend on each other)
    for want in slurmd slurmctld munged; do
      while read -r pid name; do
        [ "$name" = "$want" ] && alive "$pid" "$name" && kill "$pid" 2>/dev/null || true
      done < "$STARTED"
      for _ in $(seq 50); do
        local any=0
        while read -r pid name; do
          [ "$name" = "$want" ] && alive "$pid" "$name" && any=1
        done < "$STARTED"
        [ "$any" = 0 ] && break
        sleep 0.1
      done
      while read -r pid name; do
        [ "$name" = "$want" ] && alive "$pid" "$name" && kill -9 "$pid" 2>/dev/null || true
      done < "$STARTED"
    done
    : > "$STARTED"
  fi
  remove_hosts
  say "down: stopped what $BASE/started listed"
}

cmd_status() {
  export SLURM_CONF=$CONF
  sinfo -N -o '%N %t %c %m %G'
  squeue -o '%.10i %.12j %.8T %.10M %.6D %R'
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 up|down|status|env   (see the header of this file)" >&2; exit 2 ;;
esac
