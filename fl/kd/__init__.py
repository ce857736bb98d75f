"""FedKDLoRA: a teacher pre-trained on the server's public slice and LoRA students that learn from
each other by knowledge distillation, plugged into the strategy as one part (`kd.part.Distillation`).

- `steps.py`: the teacher's distillation steps (mutual, or from the clients' ensemble);
- `teacher.py`: rank 0's teacher runtime (loaded once, its tokenizations, its state);
- `pretrain.py`: `fl pretrain-teacher`, the teacher fine-tuned on the public slice;
- `part.py`: the part: public rows per round, teacher targets down, KD on the clients, logits up,
  distillation in the server step, the teacher's metrics, state and bytes.

The loss functions themselves (temperature KL, top-k KL, attention maps) are the tasks'
(`fl.tasks.kd_losses`): a task computes its KD loss. May import config, data, models, tasks, the
strategies' part protocol, the client's training loop (pretrain-teacher) and output; never
collectives.
"""
