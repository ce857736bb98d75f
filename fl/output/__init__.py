"""What a run leaves: `rundir` (the run folder and its checks), `report` (results.json and the rich
console), `checkpoint` (atomic checkpoints and the ONE key layout of their tensors), `callbacks`
(rank 0's hooks; `tracking` puts TensorBoard and W&B behind them), `export` (the final model),
`plots` and `compare` (reading runs back). May import `fl.errors`, `fl.config`, `fl.models` and
torch; never training or collectives.
"""
