"""Activation (gradient) checkpointing of the trained models: ``--gradient-checkpointing``.

Each transformer layer's activations are dropped in the forward pass and recomputed in the
backward (``torch.utils.checkpoint``, non-reentrant), trading ~30% more compute for memory that
no longer grows with the number of layers. Gradients are those of the plain model.

``transformers`` checkpoints a layer only in train mode; the online agents run their policy and
critic in eval mode (no dropout, so π_θ/π_old is exactly 1 before an update). Each checkpointed
layer is therefore put in train mode for the forward passes that carry gradients only; its
submodules (dropout included) keep their own mode, and the layers' own code does not read it.
"""

from __future__ import annotations

import torch
from torch import nn

from agents.models.lora import unwrap

CHECKPOINT_KWARGS = {"use_reentrant": False}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Checkpoint every layer of ``model`` (a causal LM, a LoRA policy, or a bare transformer
    such as the critic's backbone) in every gradient-carrying forward, train or eval mode.
    Idempotent (a deep copy of a checkpointed model, e.g. PPO's critic, stays as it is)."""
    lm = unwrap(model)
    if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=CHECKPOINT_KWARGS)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=CHECKPOINT_KWARGS)
    for layer in lm.modules():
        if _checkpoints_in_train_mode(layer) and not hasattr(layer, "_mode_before_checkpoint"):
            layer._mode_before_checkpoint = layer.training
            layer.register_forward_pre_hook(_train_mode_with_gradients)
            layer.register_forward_hook(_restore_mode)


def _checkpoints_in_train_mode(module: nn.Module) -> bool:
    """The modules whose train mode decides the checkpointing: the repeated layers (transformers
    >= 4.52), or the models whose forward loops over them (earlier versions)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return getattr(module, "gradient_checkpointing", False) is True
    return isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing


def _train_mode_with_gradients(layer: nn.Module, args) -> None:
    layer._mode_before_checkpoint = layer.training
    layer.training = layer.training or torch.is_grad_enabled()


def _restore_mode(layer: nn.Module, args, output) -> None:
    layer.training = layer._mode_before_checkpoint
