"""The critic: a transformer backbone with a zero-initialised scalar value head on every token.

The backbone is a separate copy of the policy's (``from_policy``) or of a reward model's
(``from_backbone``, any ``save_pretrained`` directory whose base model ``AutoModel`` can load,
e.g. the Bradley–Terry reward model). The zero head makes every initial value 0, so the first
advantages are the rewards themselves rather than noise. Saved as the backbone's
``save_pretrained`` directory plus ``value_head.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, PreTrainedModel

from agents.checks import local_dir
from agents.models.lora import plain_copy, unwrap
from agents.models.policy import position_ids_from_mask

HEAD_FILE = "value_head.safetensors"


class ValueModel(nn.Module):
    """V(s_t) for every prefix of a sequence: ``forward(input_ids, attention_mask) -> (batch, L)``."""

    def __init__(self, backbone: PreTrainedModel):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_policy(cls, policy: PreTrainedModel) -> ValueModel:
        """A copy of the policy's transformer (without its LM head, and of a LoRA policy without
        the adapters: a plain, fully trainable copy of the base) under a fresh value head."""
        return cls(plain_copy(unwrap(policy).base_model))

    @classmethod
    def from_backbone(cls, path: str | Path) -> ValueModel:
        """The base model saved at ``path`` (e.g. a reward model) under a fresh value head."""
        backbone = AutoModel.from_pretrained(
            local_dir("critic backbone", path),
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
        return cls(backbone)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(batch, L) fp32 values; position ``i`` is the value after reading tokens ``0..i``."""
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.value_head(hidden.float()).squeeze(-1)

    def save_pretrained(self, path: str | Path, safe_serialization: bool = True) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path, safe_serialization=True)
        save_file(
            {k: v.contiguous() for k, v in self.value_head.state_dict().items()}, path / HEAD_FILE
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ValueModel:
        model = cls.from_backbone(path)
        model.value_head.load_state_dict(load_file(Path(path) / HEAD_FILE))
        return model


def completion_values(
    critic: ValueModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
) -> torch.Tensor:
    """Values of the states before each completion token, from ONE forward pass: (batch, T + 1).

    Column t is V(prompt + first t tokens); the last column is the value after all T columns
    (used to bootstrap truncated sequences of full length).
    """
    return critic(input_ids, attention_mask)[:, prompt_width - 1 :]
