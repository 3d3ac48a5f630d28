#!/bin/bash
# One per node, started by `srun` in slurm/launch.sh:
#   torchrun_node.sh TORCHRUN-COMMAND...
#
# Runs torchrun and turns a stop request into SIGUSR1 for the training ranks, and nothing else.
#
# Why not just signal the step with SIGUSR1? Slurm delivers a step signal to every process of
# the step (proctrack/cgroup, linuxproc). torchrun dies of SIGUSR1 (its default action), and so
# do helper processes the ranks spawn (megatron's dist_checkpointing keeps a `spawn`ed
# multiprocessing Manager; killing it breaks the very checkpoint the preemption asks for). So
# the batch script sends SIGURG to the step instead (`scancel --signal=URG JOBID`): its
# default action is to do nothing, so only this wrapper, which traps it, reacts. It sends
# SIGUSR1 to torchrun's children (the ranks) and repeats that every NEXTLAT_RESEND_S seconds
# (default 30) until torchrun exits, so a rank still starting up (signal not yet handled:
# ignored, inherited from here) gets it once its handler is installed. Repeats are harmless: the
# trainer only sets a flag, and after it stopped it has restored the inherited "ignore".
#
# SIGUSR1 is ignored by this shell and by torchrun (inherited); the ranks install their own
# handler. SIGTERM (time limit, scancel) reaches every process from Slurm itself; this shell
# outlives it, torchrun passes it on to the ranks and waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT.

trap '' USR1
trap ':' TERM
is_host=false
[ "${SLURM_NODEID:-0}" = 0 ] && is_host=true  # node 0 hosts the c10d store, whatever its name
PET_RDZV_CONF=is_host=$is_host "$@" &
pid=$!
node=${SLURMD_NODENAME:-$(hostname)}
resend=${NEXTLAT_RESEND_S:-30}

ranks() {  # the direct children of torchrun (the ranks), from /proc: no procps needed
  local f stat rest
  for f in /proc/[0-9]*/stat; do
    stat=$(cat "$f" 2>/dev/null) || continue
    rest=${stat##*) }             # after "pid (comm) ": state ppid ...
    # shellcheck disable=SC2086  # split into fields on purpose
    set -- $rest
    [ "${2:-}" = "$pid" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
}

stop_requested=""
next_send=0
send() {
  local r
  r=$(ranks | tr '\n' ' ')
  if [ -n "$r" ]; then
    # shellcheck disable=SC2086  # one argument per rank
    kill -USR1 $r 2>/dev/null
    if [ "$1" = first ]; then
      echo "[nextlat-node $node] stop requested: SIGUSR1 -> ranks ${r% }"
    else
      echo "[nextlat-node $node] SIGUSR1 -> ranks ${r% } again (a rank still starting up ignores it)"
    fi
  elif [ "$1" = first ]; then
    echo "[nextlat-node $node] stop requested before the ranks started; retrying every ${resend}s"
  fi
  next_send=$((SECONDS + resend))
}
on_urg() {
  [ -n "$stop_requested" ] && return
  stop_requested=1
  send first
}
trap on_urg URG

while kill -0 "$pid" 2>/dev/null; do
  if [ -z "$stop_requested" ]; then
    wait "$pid"              # returns early when a trapped signal arrives
  else
    sleep 1 & wait $!
    [ "$SECONDS" -ge "$next_send" ] && kill -0 "$pid" 2>/dev/null && send again
  fi
done
wait "$pid"
