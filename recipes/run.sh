#!/usr/bin/env bash
# Launch one federated job with torchrun: rank 0 aggregates, ranks 1..N are clients.
#
#   recipes/run.sh <num_clients> <recipe.yaml> [key=value ...]
#   recipes/run.sh 4 recipes/cola-fedlora.yaml data_dir=../shared/data/glue
#
# nproc_per_node = num_clients + 1, and num_clients=<num_clients> is passed on (a later
# key=value wins). Extra torchrun flags (multi-node) go in TORCHRUN_ARGS, e.g.
#   TORCHRUN_ARGS="--nnodes=2 --node_rank=0 --rdzv-endpoint=host0:29500" recipes/run.sh 8 ...
set -euo pipefail
if [[ $# -lt 2 || ! "$1" =~ ^[0-9]+$ || "$1" -lt 1 ]]; then
  echo "usage: recipes/run.sh <num_clients> <recipe.yaml> [key=value ...]" >&2
  exit 2
fi
clients=$1
recipe=$2
shift 2
if [[ -z "${TORCHRUN_ARGS:-}" ]]; then
  TORCHRUN_ARGS="--standalone"
fi
# shellcheck disable=SC2086
exec torchrun $TORCHRUN_ARGS --nproc_per_node=$((clients + 1)) -m fl run "$recipe" "num_clients=$clients" "$@"
