"""The `dp` section of the config. Client-level differential privacy (DP-FedAvg, McMahan et al. 2018):
clipping, noise and the accountant's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.config.fields import config_field as _f
from fl.errors import ConfigError


@dataclass
class PrivacySection:
    """Client-level differential privacy (DP-FedAvg, McMahan et al. 2018): clipping, noise and the
    accountant's budget.
    """

    SECTION = "dp"

    dp_clip: float | None = _f(
        None, "DP: clip each client's update to this L2 norm; unset: no DP", lo=0, hi=1e6, open_lo=True
    )
    dp_noise_multiplier: float = _f(1.0, "DP: noise std on the sum = dp_noise_multiplier * dp_clip", lo=0, hi=1e3)
    dp_noise_placement: str = _f(
        "server",
        "DP: server (rank 0 adds the noise) or clients (each sampled client adds its share)",
        ("server", "clients"),
    )
    dp_delta: float | None = _f(
        None,
        "DP: delta of the (epsilon, delta) reported; unset: 1/num_clients^1.1",
        lo=0,
        hi=1,
        open_lo=True,
        open_hi=True,
    )
    dp_target_epsilon: float | None = _f(
        None, "DP: stop cleanly (final checkpoint) before a round that would spend more", lo=0, hi=1e6, open_lo=True
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        if not self.dp:
            for key in ("dp_target_epsilon", "dp_delta"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{key} needs DP: set dp_clip=<L2 bound> (e.g. 1.0)")
            return
        if self.aggregation != "mean":
            raise ConfigError(
                f"dp_clip with aggregation={self.aggregation}: DP-FedAvg noises a sum; use aggregation=mean"
            )
        if self.scheme == "fedkdlora" and self.kd_placement == "clients":
            raise ConfigError(
                "dp_clip with kd_placement=clients: the clients' logits would leave them unclipped and un-noised; "
                "use kd_placement=server (the teacher then learns from the noised global model and public data)"
            )
        if self.scaffold:
            raise ConfigError("dp_clip with scaffold=true: the control variates would leave the clients un-noised")
        if self.lora_aggregation in ("fedex", "flex"):
            raise ConfigError(f"dp_clip with lora_aggregation={self.lora_aggregation}: its products travel un-noised")

    @property
    def dp(self) -> bool:
        return self.dp_clip is not None
