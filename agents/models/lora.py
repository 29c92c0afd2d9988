"""LoRA adapters (Hu et al., 2021) for the PPO, REINFORCE and DPO policies, through ``peft``.

With ``lora.r > 0`` (``--lora-r``) the policy is the initial causal LM wrapped in a ``peft`` LoRA model: every
base weight is frozen and only the low-rank factors A, B of the adapted linear layers train
(W x + (α/r)·B A x). B starts at zero, so the initial policy is exactly the base model.

Design choices:

- **The reference is the policy with its adapters switched off** (``BaseWeightsReference``):
  the same modules, run inside ``peft``'s ``disable_adapter()`` and in eval mode, compute
  π_ref = the base model exactly. No second copy of the weights is held (full fine-tuning keeps
  a frozen deep copy). The view holds the policy without registering it as a submodule, so the
  callers' ``ref.eval().requires_grad_(False)`` cannot freeze the adapters or change the
  policy's train/eval mode; each reference forward restores the policy's modes afterwards.
- ``causal_lm(model)`` yields the ``transformers`` model that computes a policy or a reference,
  for code that calls its parts (``base_model``, ``get_output_embeddings()``) rather than its
  ``forward``: the injected LoRA layers live inside it, so they apply (or not, for the reference).
- **Checkpoints hold the adapter only** (``peft``'s ``save_pretrained``); ``load_adapter_into``
  copies it back in place, so optimisers keep their parameters. Resuming needs the same base
  policy (``--policy``) as the interrupted run.
- **``save_policy`` writes a plain model**: the merged weights W + (α/r)·B A under the base
  model's own parameter names, loadable by ``AutoModelForCausalLM.from_pretrained`` without
  ``peft``, plus the adapter alone in ``adapter/``. The merged weights are computed layer by
  layer into a state dict, not by merging a deep copy of the model, so saving does not hold a
  second full copy either; the live policy keeps its adapters.
- **PPO's critic stays a full copy** of the transformer (``plain_copy``: LoRA layers replaced
  by their base layers, every weight trainable) under its value head. Putting a second adapter
  over the shared frozen base would save that copy too, but ``peft`` runs one adapter at a time
  and toggles ``requires_grad`` when switching, while PPO's loss needs both the policy's and the
  critic's forward in one backward pass; not done.
- The output head is never adapted: GPT-2 ties it to the input embeddings, so a merged update
  would silently change both.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from agents.checks import check_positive, check_range

ADAPTER = "default"  # peft's name of the one adapter we train
ADAPTER_DIR = "adapter"
ADAPTER_FILE = "adapter_model.safetensors"
ALL_LINEAR = "all-linear"


@dataclass
class LoraOptions:
    """LoRA options of the agents that train a policy against a reference (PPO, REINFORCE,
    DPO); on the command line ``--lora-r``, ``--lora-alpha``, ..."""

    r: int = 0
    """LoRA rank: train rank-r adapters on frozen base weights, the reference being the base
    model (adapters disabled, no second copy); 0 = full fine-tuning."""
    alpha: float = 16.0
    """LoRA scale α: the adapted layer computes W x + (α/r)·B A x."""
    dropout: float = 0.0
    """Dropout on the adapters' input (train mode only; the online agents run in eval mode)."""
    target_modules: str = ALL_LINEAR
    """Comma-separated names of the linear layers to adapt (e.g. c_attn,c_proj for GPT-2);
    all-linear = every linear layer except the output head."""

    def __post_init__(self) -> None:
        check_positive("lora_r", self.r, allow_zero=True)
        check_positive("lora_alpha", self.alpha, float)
        check_range("lora_dropout", self.dropout, 0.0, 1.0, "[)")


def is_lora(model: nn.Module) -> bool:
    return isinstance(model, PeftModel)


def unwrap(model: nn.Module) -> nn.Module:
    """The ``transformers`` model inside a LoRA policy (its LoRA layers injected); else ``model``."""
    return model.get_base_model() if is_lora(model) else model


def adaptable_layer_names(model: PreTrainedModel) -> dict[str, nn.Module]:
    """Every linear (or GPT-2 ``Conv1D``) layer by full name, found by module type whatever
    the architecture names it, except the output head (and any layer sharing the input
    embedding's weight, as a tied head does)."""
    head = model.get_output_embeddings()
    embedding = model.get_input_embeddings()
    tied = embedding.weight if embedding is not None else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and module is not head
        and module.weight is not tied
    }  # fmt: skip


def target_modules(model: PreTrainedModel, spec: str) -> list[str]:
    """The ``peft`` target list for ``spec``: ``all-linear`` → the full name of every layer of
    ``adaptable_layer_names``; else comma-separated names, each of which must match a layer
    (the full name, or its last components)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == [ALL_LINEAR]:
        return list(adaptable_layer_names(model))
    if not names:
        raise ValueError(f"lora_target_modules is empty; name layers or use {ALL_LINEAR!r}")
    layers = adaptable_layer_names(model)
    unknown = [n for n in names if not any(f == n or f.endswith("." + n) for f in layers)]
    if unknown:
        short = sorted({name.rsplit(".", 1)[-1] for name in layers})
        raise ValueError(
            f"lora_target_modules {unknown} match none of the model's linear layers LoRA can "
            f"adapt: {', '.join(short)} (or {ALL_LINEAR!r}; the output head is never adapted, "
            "it is tied to the input embeddings)"
        )
    return names


def with_lora(model: PreTrainedModel, options: LoraOptions) -> nn.Module:
    """``model`` wrapped in LoRA adapters when ``options.r > 0`` (only the adapters are
    trainable; ``model`` itself gets the LoRA layers injected), else ``model`` unchanged."""
    if options.r == 0:
        return model
    if is_lora(model):
        raise ValueError("the policy already carries peft adapters; pass the plain model")
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target_modules(model, options.target_modules),
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft probes a transformers attribute deprecated in v5
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config, adapter_name=ADAPTER)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimiser should get: all of a plain model, the adapters of a LoRA one."""
    return [p for p in model.parameters() if p.requires_grad]


@contextmanager
def base_weights(policy: PeftModel) -> Iterator[nn.Module]:
    """Run ``policy`` as its base model: adapters disabled, eval mode; both restored on exit."""
    modes = [(module, module.training) for module in policy.modules()]
    policy.eval()
    try:
        with policy.disable_adapter():
            yield policy.get_base_model()
    finally:
        for module, training in modes:
            module.training = training


class BaseWeightsReference(nn.Module):
    """π_ref of a LoRA policy: the policy's own modules with the adapters disabled.

    The policy is deliberately NOT a submodule: ``ref.eval()``, ``ref.requires_grad_(False)``,
    ``ref.parameters()`` act on nothing, so they cannot freeze or move the adapters.
    """

    def __init__(self, policy: PeftModel):
        super().__init__()
        if not is_lora(policy):
            raise TypeError("BaseWeightsReference needs a LoRA (peft) policy")
        object.__setattr__(self, "policy", policy)  # bypasses nn.Module's submodule registration

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ):
        """The base model's output for (batch, L) ``input_ids`` (logits of the last
        ``logits_to_keep`` positions; 0 = all)."""
        with base_weights(self.policy) as lm:
            return lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
            )


@contextmanager
def causal_lm(model: nn.Module) -> Iterator[nn.Module]:
    """The ``transformers`` causal LM computing ``model`` (a plain model, a LoRA policy or a
    ``BaseWeightsReference``), for callers that use its parts rather than its ``forward``."""
    if isinstance(model, BaseWeightsReference):
        with base_weights(model.policy) as lm:
            yield lm
    else:
        yield unwrap(model)


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every LoRA layer replaced by its base layer and every
    weight trainable: a plain model again (e.g. PPO's critic backbone from a LoRA policy)."""
    plain = copy.deepcopy(module)
    tuner_layers = [n for n, m in plain.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in tuner_layers:
        parent, _, child = name.rpartition(".")
        owner = plain.get_submodule(parent)
        setattr(owner, child, getattr(owner, child).get_base_layer())
    return plain.requires_grad_(True)


@torch.no_grad()
def merged_state_dict(policy: PeftModel) -> dict[str, torch.Tensor]:
    """The base model's state dict with each adapted weight replaced by W + (α/r)·B A.

    Keys are the plain model's (``…c_attn.weight``, not ``…c_attn.base_layer.weight``);
    adapter factors are left out; untouched tensors are shared, not copied.
    """
    lm = policy.get_base_model()
    lora_layers = {name: m for name, m in lm.named_modules() if isinstance(m, LoraLayer)}
    merged = {}
    for key, value in lm.state_dict().items():
        owner, found, param = key.rpartition(".base_layer.")
        if found:
            if param == "weight":
                value = value + lora_layers[owner].get_delta_weight(ADAPTER).to(value.dtype)
            key = f"{owner}.{param}"
        elif ".lora_" in key:
            continue
        merged[key] = value
    return merged


def save_policy(model: nn.Module, path: str | Path, tokenizer=None) -> None:
    """``save_pretrained`` (safetensors) of a policy as a plain model, with ``tokenizer``.

    A LoRA policy is saved merged (``from_pretrained`` loadable, no ``peft`` needed), and its
    adapter alone goes to ``path/adapter`` (``PeftModel.from_pretrained(base, path/adapter)``).
    """
    path = Path(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    if not is_lora(model):
        model.save_pretrained(path, safe_serialization=True)
        return
    model.get_base_model().save_pretrained(
        path, state_dict=merged_state_dict(model), safe_serialization=True
    )
    model.save_pretrained(path / ADAPTER_DIR, safe_serialization=True)


def load_adapter_into(model: PeftModel, path: str | Path) -> None:
    """Copy the adapter saved at ``path`` (by ``save_pretrained``) into ``model``, in place."""
    path = Path(path)
    if not (path / ADAPTER_FILE).is_file():
        raise FileNotFoundError(
            f"{path} holds no LoRA adapter ({ADAPTER_FILE}): was it saved by a run without "
            "--lora-r? Resume with the options of the run that wrote it"
        )
    saved = load_file(path / ADAPTER_FILE)
    expected = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    if set(saved) != set(expected):
        raise ValueError(
            f"the adapter at {path} does not fit this policy's adapters: it has "
            f"{sorted(set(saved) - set(expected))[:3]} extra and "
            f"{sorted(set(expected) - set(saved))[:3]} missing keys (other target modules?)"
        )
    set_peft_model_state_dict(model, saved, adapter_name=ADAPTER)
