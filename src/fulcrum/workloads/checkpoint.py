"""Loading weights safely: safetensors, or ``torch.load(weights_only=True)``; pickle only on request."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from fulcrum.errors import CheckpointError, first_line


def read_state(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor] | nn.Module:
    """The tensors in a checkpoint file (or a pickled module, only with ``allow_pickle``)."""
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {str(path)!r} is a folder; name the weights file in it (a .safetensors "
            "or a torch.save state_dict)."
        )
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist; check the path in the workload file."
        )
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a valid safetensors file ({first_line(exc)})."
            ) from None
    try:
        with warnings.catch_warnings():  # torch explains its refusal at length: one line here
            warnings.simplefilter("ignore")
            obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not allow_pickle:
            raise CheckpointError(
                f"checkpoint {str(path)!r} needs arbitrary pickle to load, which can run code; "
                "re-save it as a state_dict or safetensors, or pass --allow-pickle if you trust it."
            ) from None
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read by torch.load ({first_line(exc)})."
        ) from None
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict of tensors; "
            "save it with torch.save(model.state_dict(), path)."
        )
    return obj


def load_into(model: nn.Module, path: Path, *, allow_pickle: bool = False) -> nn.Module:
    """``model`` with the checkpoint's weights; shapes and names must match exactly."""
    state = read_state(path, allow_pickle=allow_pickle)
    if isinstance(state, nn.Module):
        return state
    expected = model.state_dict()
    for name, tensor in state.items():
        if name in expected and tuple(expected[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"checkpoint {path.name!r}: tensor {name!r} has shape {list(tensor.shape)} but the model "
                f"expects {list(expected[name].shape)}; the checkpoint was saved from a different model definition."
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(
            f"checkpoint {path.name!r} does not fit the model ({'; '.join(parts)}); "
            "it was saved from a different model definition."
        )
    model.load_state_dict(state)
    return model.eval()
