"""FedKDLoRA: a teacher pre-trained on the server's public slice and LoRA students that learn from
each other by knowledge distillation, plugged into the strategy as one part (`kd.part.Distillation`).

- `losses.py`: temperature KL and attention-map transfer;
- `steps.py`: the teacher's distillation steps (mutual, or from the clients' ensemble);
- `teacher.py`: rank 0's teacher runtime (loaded once, its tokenizations, its state);
- `part.py`: the part: public rows per round, teacher targets down, KD on the clients, logits up,
  distillation in the server step, the teacher's metrics, state and bytes.
"""
