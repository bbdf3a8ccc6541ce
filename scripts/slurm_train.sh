#!/bin/bash
# run.py on several SLURM nodes: one torchrun per node (srun), one process per GPU, c10d
# rendezvous on the first node of the allocation. Flags after the script go to run.py:
#   sbatch --nodes 2 --gres gpu:4 scripts/slurm_train.sh --run mmer --csv_path ... --save_path /shared/runs
# The data and --save_path must be on storage every node reads (only rank 0 writes).
#SBATCH --job-name=mmer
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
. scripts/ensure_venv.sh
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
gpus_per_node=${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$gpus_per_node" -gt 0 ] || gpus_per_node=1   # CPU nodes: one gloo process each
srun --kill-on-bad-exit=1 "$PY" -m torch.distributed.run --nnodes "$SLURM_JOB_NUM_NODES" \
    --nproc_per_node "$gpus_per_node" --rdzv_backend c10d --rdzv_endpoint "$head_node:${MMER_PORT:-29500}" \
    --rdzv_id "mmer-$SLURM_JOB_ID" -- run.py "$@"
