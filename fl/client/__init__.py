"""How a client trains: `runners` train the clients a rank hosts (one after another, K at once,
or one client over several ranks) and form their updates; `step` is the ONE local training loop
they all run (AdamW with a transformers schedule, autocast, the task's loss, the strategy's client
terms); `batched` stacks K clients' trainable layers so that loop steps them together; `train`
holds the schedule, the optimizer and precision; `memory` trims the CPU heap between steps. May
import models, tasks' protocol, strategies' client side and its own group's collectives; never the
federated exchange.
"""
