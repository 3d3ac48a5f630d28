#!/bin/bash
# A 125M NextLat model (configs/125m.yaml) on one node × 8 GPUs, with preemption,
# requeue and automatic resume. Every size uses the same launcher (slurm/launch.sh).
#
#   DATA=/data/fineweb-edu SAVE_DIR=/ckpt/nextlat-125m sbatch slurm/pretrain_125m.sh
#   NODES=2 DATA=... SAVE_DIR=... slurm/pretrain_125m.sh train.lr=3e-4   # checks, then submits
#
# Submit from the repository root (or set NEXTLAT_ROOT). Resubmitting the same command
# resumes from the newest checkpoint in SAVE_DIR. Environment: see slurm/launch.sh and
# docs/multinode.md (CONFIG, DATA, SAVE_DIR, NODES, EXTRA_ARGS, NPROC_PER_NODE, ...).
#
#SBATCH --job-name=nextlat-125m
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out

: "${CONFIG:=configs/125m.yaml}"

# sbatch runs a copy of this file: find the repository from the environment, the submission
# directory, or the path this job was submitted with.
if [ -z "${NEXTLAT_ROOT:-}" ]; then
  if [ -z "${SLURM_JOB_ID:-}" ]; then
    NEXTLAT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  elif [ -f "${SLURM_SUBMIT_DIR:-}/slurm/launch.sh" ]; then
    NEXTLAT_ROOT=$SLURM_SUBMIT_DIR
  else
    NEXTLAT_ROOT=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null \
      | sed -n 's|^ *Command=\(.*\)/slurm/[^/ ]*\( .*\)\{0,1\}$|\1|p' | head -n1)
  fi
fi
if [ ! -f "${NEXTLAT_ROOT:-}/slurm/launch.sh" ]; then
  echo "ERROR: cannot find the nextlat_pt repository (slurm/launch.sh): submit from its root or set NEXTLAT_ROOT" >&2
  exit 2
fi
NEXTLAT_SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
export NEXTLAT_ROOT
# shellcheck source=slurm/launch.sh
source "$NEXTLAT_ROOT/slurm/launch.sh"
