"""How a client trains: `runners` train the clients a rank hosts (one after another, K at once,
or one client over several ranks) and form their updates; `step` is the ONE local training loop
they all run (AdamW with a transformers schedule, autocast, the task's loss, the strategy's client
terms); `batched` stacks K clients' trainable layers so that loop steps them together; `train`
holds the schedule and the optimizer (precision is `fl.models.precision`); `memory` trims the CPU
heap between steps. May import config, models, the strategies' client side (terms, updates) and
its own group's collectives (DDP, group sums); never tasks' modules (a task is passed in) or the
federated exchange.
"""
