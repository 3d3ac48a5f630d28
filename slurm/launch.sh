# shellcheck shell=bash
# The shared Slurm launcher behind slurm/pretrain_{125m,350m,1b}.sh (sourced by them; not a job
# script itself). docs/multinode.md explains it; in short:
#
#   CONFIG=configs/1b.yaml DATA=/data/fineweb-edu SAVE_DIR=/ckpt/1b-nextlat \
#       sbatch --nodes=4 slurm/pretrain_1b.sh [key=value ...]
#   NODES=4 DATA=... SAVE_DIR=... slurm/pretrain_1b.sh [key=value ...]   # checks, then submits
#
# Inside the job: checks the inputs (and the config, with the job's world size) before anything
# starts; MASTER_ADDR = the first node, MASTER_PORT derived from the job id; `srun` starts one
# torchrun per node (c10d rendezvous; slurm/torchrun_node.sh). A preemption signal to the batch
# shell (`#SBATCH --signal=B:USR1@600`, `scancel --signal=USR1 --batch JOBID`, or SIGTERM)
# becomes SIGUSR1 for every rank (and only the ranks): they save at the next step boundary and
# exit 75, rank 0 writes $SAVE_DIR/PREEMPTED, and this script runs `scontrol requeue`. The
# requeued job (and any resubmission with the same SAVE_DIR) resumes from the newest complete
# checkpoint.
#
# Environment (all optional except DATA and SAVE_DIR):
#   CONFIG          YAML config (path, or a name in configs/); the wrapper sets its default
#   DATA            a prepared dataset dir (`nextlat-pt prepare-data`), a blend
#                   "DIR:WEIGHT,DIR:WEIGHT", or "builtin" (the built-in demo corpus)
#   SAVE_DIR        the run directory (run.dir): checkpoints, metrics, PREEMPTED; its parent
#                   must exist. Relative paths are taken from the submission directory.
#   NODES           with the script run directly (not under sbatch): sbatch --nodes=NODES
#   SBATCH_ARGS     with the script run directly: more sbatch options ("--partition=x ...")
#   EXTRA_ARGS      more key=value overrides (split on spaces; arguments after the script
#                   name are passed verbatim and may contain spaces)
#   NPROC_PER_NODE  ranks per node (default: GPUs on the node, else 1)
#   MASTER_PORT     default 20000 + 4·(job id mod 3000) + restart count mod 4
#   PYTHON          default <repo>/.venv/bin/python if present, else python3
#   MAX_REQUEUES    stop requeueing after this many restarts (default 20)
#   NEXTLAT_ROOT    the repository (default: found from the submission directory / the job)
#   NEXTLAT_SWEEP   set by `nextlat-pt sweep ... --slurm SCRIPT` (a sweep.json): in array task
#                   i this job trains the sweep's run i (its SAVE_DIR and overrides)
#   OMP_NUM_THREADS default CPUs per rank; CUDA_DEVICE_MAX_CONNECTIONS default 1;
#   TORCH_ELASTIC_SHUTDOWN_TIMEOUT default 600 (how long torchrun lets workers finish saving)

_nl_log() { echo "[nextlat-slurm $(date '+%F %T')] $*"; }
_nl_fail() {
  echo "[nextlat-slurm $(date '+%F %T')] ERROR: $*" >&2
  exit 2  # a failed job, never requeued
}

# --- where things are --------------------------------------------------------------------------
_NL_FROM=${SLURM_SUBMIT_DIR:-$PWD}
_nl_abs() {  # an absolute path, relative ones taken from where the job was submitted
  case "$1" in
    /*) echo "$1" ;;
    *) echo "$_NL_FROM/$1" ;;
  esac
}

[ -n "${NEXTLAT_ROOT:-}" ] && [ -d "$NEXTLAT_ROOT/nextlat_pt" ] \
  || _nl_fail "NEXTLAT_ROOT='${NEXTLAT_ROOT:-}' is not the nextlat_pt repository"
cd "$NEXTLAT_ROOT" || _nl_fail "cannot enter $NEXTLAT_ROOT"

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$NEXTLAT_ROOT/.venv/bin/python" ]; then PYTHON=$NEXTLAT_ROOT/.venv/bin/python
  else PYTHON=python3; fi
fi

# --- the inputs: config, data, save directory, overrides ---------------------------------------
OVERRIDES=("$@")
if [ -n "${NEXTLAT_SWEEP:-}" ]; then  # one run of `nextlat-pt sweep --slurm`: its dir and overrides
  [ -n "${SLURM_ARRAY_TASK_ID:-}" ] \
    || _nl_fail "NEXTLAT_SWEEP is set but this is not an array task; submit sweeps with: nextlat-pt sweep CONFIG --grid ... --slurm $0"
  _nl_sweep=$("$PYTHON" -m nextlat_pt sweep --array-task "$NEXTLAT_SWEEP" "$SLURM_ARRAY_TASK_ID") \
    || _nl_fail "cannot read run $SLURM_ARRAY_TASK_ID of the sweep $NEXTLAT_SWEEP"
  mapfile -t _nl_sweep_lines <<< "$_nl_sweep"
  SAVE_DIR=${_nl_sweep_lines[0]}
  OVERRIDES+=("${_nl_sweep_lines[@]:1}")
fi
if [ -n "${EXTRA_ARGS:-}" ]; then
  read -r -a _nl_extra <<< "$EXTRA_ARGS"
  OVERRIDES+=("${_nl_extra[@]}")
fi
for _nl_o in "${OVERRIDES[@]}"; do
  case "$_nl_o" in
    -*) _nl_fail "argument '$_nl_o' looks like an sbatch option: put sbatch options before the script (sbatch $_nl_o slurm/pretrain_1b.sh) or in SBATCH_ARGS; after it come only key=value overrides" ;;
    *=*) ;;
    *) _nl_fail "argument '$_nl_o' is not a key=value override (e.g. train.lr=3e-4)" ;;
  esac
  case "$_nl_o" in
    run.dir=*|checkpoint.dir=*) _nl_fail "'$_nl_o': set SAVE_DIR instead (the script reads \$SAVE_DIR/PREEMPTED and \$SAVE_DIR/checkpoints)" ;;
    data.train=*) _nl_fail "'$_nl_o': set DATA instead (DIR, DIR:W,DIR:W, or builtin)" ;;
  esac
done

[ -n "${CONFIG:-}" ] || _nl_fail "CONFIG is not set (a YAML file, e.g. configs/1b.yaml)"
case "$CONFIG" in
  /*) [ -f "$CONFIG" ] || _nl_fail "config file $CONFIG does not exist" ;;
  *.yaml|*.yml|*/*)  # relative: to the submission directory, else to the repository
    if [ -f "$_NL_FROM/$CONFIG" ]; then CONFIG=$_NL_FROM/$CONFIG
    elif [ -f "$NEXTLAT_ROOT/$CONFIG" ]; then CONFIG=$NEXTLAT_ROOT/$CONFIG
    else _nl_fail "config file $CONFIG does not exist (looked in $_NL_FROM and $NEXTLAT_ROOT)"; fi ;;
  *) [ -f "$NEXTLAT_ROOT/configs/$CONFIG.yaml" ] \
       || _nl_fail "config '$CONFIG' is neither a YAML file nor a name in $NEXTLAT_ROOT/configs/"
     CONFIG=$NEXTLAT_ROOT/configs/$CONFIG.yaml ;;
esac

[ -n "${DATA:-}" ] || _nl_fail "DATA is not set: a prepared dataset directory (nextlat-pt prepare-data --output DIR), a blend 'DIR:WEIGHT,DIR:WEIGHT', or 'builtin' for the built-in demo corpus"
DATA_OVERRIDE=()
if [ "$DATA" = builtin ]; then
  DATA_OVERRIDE=("data.train=[]")
else
  _nl_items=""
  IFS=',' read -r -a _nl_sources <<< "$DATA"
  for _nl_src in "${_nl_sources[@]}"; do
    _nl_path=$_nl_src; _nl_weight=1
    if [[ "$_nl_src" =~ ^(.+):([0-9.eE+-]+)$ ]]; then
      _nl_path=${BASH_REMATCH[1]}; _nl_weight=${BASH_REMATCH[2]}
    fi
    _nl_path=$(_nl_abs "$_nl_path")
    [ -d "$_nl_path" ] || _nl_fail "DATA: dataset directory $_nl_path does not exist"
    [ -f "$_nl_path/index.json" ] || [ -f "$_nl_path/train/index.json" ] \
      || _nl_fail "DATA: $_nl_path is not a prepared dataset (no index.json, nor train/index.json): run nextlat-pt prepare-data --output $_nl_path, or let it finish"
    _nl_items="${_nl_items:+$_nl_items, }{path: \"$_nl_path\", weight: $_nl_weight}"
  done
  DATA_OVERRIDE=("data.train=[$_nl_items]")
fi

[ -n "${SAVE_DIR:-}" ] || _nl_fail "SAVE_DIR is not set (the run directory: checkpoints, metrics, logs of the run)"
SAVE_DIR=$(_nl_abs "$SAVE_DIR")
[ -d "$(dirname "$SAVE_DIR")" ] \
  || _nl_fail "SAVE_DIR: the parent directory $(dirname "$SAVE_DIR") does not exist (create it on the shared filesystem first)"
if [ -e "$SAVE_DIR" ] && { [ ! -d "$SAVE_DIR" ] || [ ! -w "$SAVE_DIR" ]; }; then
  _nl_fail "SAVE_DIR: $SAVE_DIR is not a writable directory"
fi
[ -w "$(dirname "$SAVE_DIR")" ] || [ -d "$SAVE_DIR" ] \
  || _nl_fail "SAVE_DIR: cannot create $SAVE_DIR (its parent is not writable)"

TRAIN_ARGS=("$CONFIG" "run.dir=$SAVE_DIR" "${DATA_OVERRIDE[@]}" "${OVERRIDES[@]}")

_nl_check_config() {  # _nl_check_config WORLD_SIZE: the trainer's own validation, one line
  "$PYTHON" - "$1" "${TRAIN_ARGS[@]}" <<'PY' || _nl_fail "the configuration above is not valid (nothing was started)"
import sys
try:
    from nextlat_pt.config import ConfigError, load_config, validate
except Exception as err:  # noqa: BLE001
    print(f"cannot import nextlat_pt with {sys.executable}: {err}; set PYTHON", file=sys.stderr)
    sys.exit(1)
world, config, overrides = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
try:
    cfg = load_config(config, overrides)
    validate(cfg, world_size=world)
except ConfigError as err:
    print(f"config error: {err}", file=sys.stderr)
    sys.exit(1)
t, p = cfg.train, cfg.parallel
dp = world // (p.tp * p.pp)
tokens = t.global_batch_size * cfg.model.seq_len
print(f"config {config}: {cfg.model.num_layers} layers × {cfg.model.hidden_size}, "
      f"{t.max_steps} steps × {tokens:,} tokens = {t.max_steps * tokens / 1e9:.2f}B tokens; "
      f"world {world} = tp {p.tp} × pp {p.pp} × dp {dp}, "
      f"{t.global_batch_size // (t.micro_batch_size * dp)} micro-batch(es) of "
      f"{t.micro_batch_size} per rank per step")
PY
}

# --- not inside a job: check, then submit this script ------------------------------------------
if [ -z "${SLURM_JOB_ID:-}" ]; then
  [ -n "${NEXTLAT_SCRIPT:-}" ] || _nl_fail "NEXTLAT_SCRIPT is not set (run slurm/pretrain_*.sh, not launch.sh)"
  _nl_nodes=${NODES:-$(sed -n 's/^#SBATCH --nodes=\([0-9]*\).*/\1/p' "$NEXTLAT_SCRIPT" | head -n1)}
  _nl_check_config $(( ${_nl_nodes:-1} * ${NPROC_PER_NODE:-8} ))
  command -v sbatch >/dev/null || _nl_fail "sbatch not found: run this on a Slurm login node"
  export CONFIG DATA SAVE_DIR NEXTLAT_ROOT PYTHON
  _nl_log "inputs look right; submitting: sbatch ${NODES:+--nodes=$NODES }${SBATCH_ARGS:+$SBATCH_ARGS }$NEXTLAT_SCRIPT ${OVERRIDES[*]}"
  # shellcheck disable=SC2086
  exec sbatch ${NODES:+--nodes=$NODES} ${SBATCH_ARGS:-} "$NEXTLAT_SCRIPT" "${OVERRIDES[@]}"
fi

# --- inside the job ----------------------------------------------------------------------------

# --- signals: a stop request for the training step ------------------------------------------
# The preemption signal reaches this shell only (`--signal=B:USR1@...`, `scancel --batch`).
# It becomes SIGURG for the training step, which only slurm/torchrun_node.sh reacts to: it sends
# SIGUSR1 to the ranks and nothing else (see there why the step is not sent SIGUSR1 itself).
_NL_SIGNAL=""
_NL_SRUN_PID=""
_nl_on_signal() {
  if [ -n "$_NL_SIGNAL" ]; then
    _nl_log "received SIG$1 again (SIG$_NL_SIGNAL already forwarded); ignored"
    return
  fi
  _NL_SIGNAL=$1
  if [ -z "$_NL_SRUN_PID" ] || ! kill -0 "$_NL_SRUN_PID" 2>/dev/null; then
    _nl_log "received SIG$1 before training started"
    return
  fi
  _nl_log "received SIG$1: asking every node to stop (scancel --signal=URG $SLURM_JOB_ID -> SIGUSR1 to the ranks); they save at the next step boundary"
  if ! scancel --signal=URG "$SLURM_JOB_ID"; then
    _nl_log "scancel failed: sending SIGUSR1 to the whole step instead (srun pid $_NL_SRUN_PID)"
    kill -USR1 "$_NL_SRUN_PID" 2>/dev/null || true
  fi
}
trap '_nl_on_signal USR1' USR1
trap '_nl_on_signal TERM' TERM

RESTARTS=${SLURM_RESTART_COUNT:-0}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
if [ -n "${NODES:-}" ] && [ "$NODES" != "$NNODES" ]; then
  _nl_fail "NODES=$NODES but the allocation has $NNODES node(s): submit with sbatch --nodes=$NODES, or run the script directly (it submits itself with --nodes=\$NODES)"
fi
_nl_gpus=${SLURM_GPUS_ON_NODE:-0}
NPROC_PER_NODE=${NPROC_PER_NODE:-$([ "$_nl_gpus" -gt 0 ] 2>/dev/null && echo "$_nl_gpus" || echo 1)}
WORLD_SIZE_TOTAL=$(( NNODES * NPROC_PER_NODE ))
_nl_cpus=${SLURM_CPUS_ON_NODE:-$(nproc)}
_nl_cpt=$(( _nl_cpus / NPROC_PER_NODE )); [ "$_nl_cpt" -ge 1 ] || _nl_cpt=1

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
MASTER_PORT=${MASTER_PORT:-$(( 20000 + 4 * (SLURM_JOB_ID % 3000) + RESTARTS % 4 ))}
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$_nl_cpt}
export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-600}
export PYTHONUNBUFFERED=1
MAX_REQUEUES=${MAX_REQUEUES:-20}

_nl_log "job $SLURM_JOB_ID start (SLURM_RESTART_COUNT=$RESTARTS) on $NNODES node(s) $SLURM_JOB_NODELIST; batch host $(hostname)"
_nl_log "torchrun on each node, $NPROC_PER_NODE rank(s) per node, world $WORLD_SIZE_TOTAL; MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT; OMP_NUM_THREADS=$OMP_NUM_THREADS"
_nl_log "config $CONFIG; data $DATA; save dir $SAVE_DIR; overrides: ${OVERRIDES[*]:-(none)}"
_nl_log "python $PYTHON; repository $NEXTLAT_ROOT; $(env | grep -E '^(NCCL|GLOO|TORCH_NCCL)_' | tr '\n' ' ')"
_nl_check_config "$WORLD_SIZE_TOTAL"
mkdir -p "$SAVE_DIR" || _nl_fail "cannot create SAVE_DIR $SAVE_DIR"
if [ -s "$SAVE_DIR/checkpoints/latest" ]; then
  _nl_log "newest checkpoint: $SAVE_DIR/checkpoints/$(cat "$SAVE_DIR/checkpoints/latest") (the run resumes from it)"
fi
rm -f "$SAVE_DIR/PREEMPTED"  # a stale marker must not make a crash look like a preemption

if [ -n "$_NL_SIGNAL" ]; then
  _nl_log "not starting: a preemption signal came first"
  rc=75
else
  srun --nodes="$NNODES" --ntasks-per-node=1 --ntasks="$NNODES" --cpus-per-task="$_nl_cpus" \
    --kill-on-bad-exit=1 \
    bash "$NEXTLAT_ROOT/slurm/torchrun_node.sh" \
    "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    --rdzv_id="$SLURM_JOB_ID-$RESTARTS" --max_restarts=0 \
    -m nextlat_pt train "${TRAIN_ARGS[@]}" &
  _NL_SRUN_PID=$!
  # bash runs a trap only between commands: wait on the background srun (interruptible).
  while kill -0 "$_NL_SRUN_PID" 2>/dev/null; do wait "$_NL_SRUN_PID"; done
  wait "$_NL_SRUN_PID"; rc=$?
fi

# --- finished, preempted, or failed ------------------------------------------------------------
_nl_latest=$(cat "$SAVE_DIR/checkpoints/latest" 2>/dev/null || echo none)
if [ -f "$SAVE_DIR/PREEMPTED" ] || [ "$rc" = 75 ] || { [ -n "$_NL_SIGNAL" ] && [ "$rc" != 0 ]; }; then
  _nl_step=$(cat "$SAVE_DIR/PREEMPTED" 2>/dev/null || echo "?")
  _nl_log "preempted (signal ${_NL_SIGNAL:-none}, srun exit $rc, PREEMPTED step $_nl_step); newest checkpoint: $_nl_latest"
  if [ "$RESTARTS" -ge "$MAX_REQUEUES" ]; then
    _nl_log "not requeueing: the job was already requeued $RESTARTS times (MAX_REQUEUES=$MAX_REQUEUES); resubmit to resume"
    exit 75
  fi
  _nl_log "requeueing job $SLURM_JOB_ID (scontrol requeue); it resumes from $_nl_latest"
  if scontrol requeue "$SLURM_JOB_ID"; then
    exit 0
  fi
  _nl_log "scontrol requeue failed: resubmit the same command to resume"
  exit 75
fi
if [ "$rc" = 0 ]; then
  _nl_log "training finished; newest checkpoint: $_nl_latest"
  # A sweep's run: finished, so relaunching the sweep skips it.
  if [ -n "${NEXTLAT_SWEEP:-}" ]; then echo finished > "$SAVE_DIR/SWEEP_DONE"; fi
  exit 0
fi
_nl_log "training failed (srun exit $rc); not requeueing. Newest checkpoint: $_nl_latest (resubmitting resumes from it)"
exit "$rc"
