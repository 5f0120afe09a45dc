"""Models and data named on the command line (or in a TOML file): one parser for each.

Model specs (:func:`load_model`):

- ``timm:NAME`` / ``torchvision:NAME`` — an architecture at random init (``--weights`` loads a local file);
- ``vision:NAME`` / ``rl:NAME`` — a model of the shipped zoos (``interp zoo`` lists them);
- ``sb3:ALGO:PATH.zip`` — a stable-baselines3 (or sb3-contrib) model saved with ``model.save``; such zips hold
  pickles, so they load only with ``trust_pickle=True`` (``--trust-pickle``); ``env=`` names its environment;
- ``py:MODULE:FACTORY`` — ``MODULE.FACTORY(**model_kwargs)`` returns the user's own ``nn.Module``.

``model_kwargs`` (``--model-kwargs num_classes=10,img_size=64``) go to the constructor. Weights
(:func:`read_state_dict`): safetensors files, torch state dicts and checkpoint dicts (``state_dict`` /
``model_state_dict`` / ``model`` keys, a DDP ``module.`` prefix removed). A whole pickled model runs code from
the file when loaded, so it is refused unless ``trust_pickle=True``.

Data specs (:func:`load_data`): a folder of images in class sub-folders (torchvision ``ImageFolder``, resized to
the model's input size), a tensor file (``.pt``, ``.safetensors``, ``.npy``, ``.npz``: inputs alone, or inputs
and labels under ``x`` / ``y``), or ``env:ID`` (a gymnasium environment, for agents: observations of rollouts).
The domain packages are imported by name only when a spec needs them.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from .errors import InputError, StoreError

MODEL_PREFIXES = ("timm", "torchvision", "vision", "rl", "sb3", "py")


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """``"num_classes=10,img_size=64,global_pool=avg"`` -> ``{"num_classes": 10, "img_size": 64, ...}``."""
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InputError(f"model kwargs: {part!r} is not KEY=VALUE; write e.g. num_classes=10,img_size=64")
        out[key.strip()] = _scalar(value.strip())
    return out


def _scalar(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, Any]:
    """The state dict (name -> tensor) in ``path``; :class:`StoreError` naming the file when it holds none."""
    import torch

    path = Path(path)
    where = f"weights file '{path}'"
    if not path.exists():
        raise StoreError(f"{where} does not exist; give the path of a .safetensors file or a torch checkpoint")
    if path.is_dir():
        raise StoreError(f"{where} is a directory; give the path of the weights file inside it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise StoreError(f"{where} is not a readable safetensors file ({e}); re-save it with "
                             f"safetensors.torch.save_file(model.state_dict(), path)") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e) and "GLOBAL" not in str(e):  # not objects: not a checkpoint at all
            raise StoreError(f"{where} could not be read as a torch checkpoint (UnpicklingError: "
                             f"{_first_line(e)}); save weights with torch.save(model.state_dict(), path)") from None
        if not trust_pickle:
            raise StoreError(f"{where} holds pickled Python objects (a whole model or custom classes), and loading "
                             f"it would run code from the file; save a state dict instead "
                             f"(torch.save(model.state_dict(), path)) or, if you trust the file, allow it with "
                             f"trust_pickle=True (CLI: --trust-pickle)") from None
        obj = torch.load(str(path), map_location="cpu", weights_only=False)  # the caller trusts this file
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
    except Exception as e:  # many types: RuntimeError (not a zip), EOFError, ...
        raise StoreError(f"{where} could not be read as a torch checkpoint ({type(e).__name__}: {_first_line(e)}); "
                         f"save weights with torch.save(model.state_dict(), path) or as .safetensors") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        odd = [repr(k) for k, v in obj.items() if not torch.is_tensor(v)] if isinstance(obj, dict) else []
        odd = ", ".join(odd[:3]) + (", ..." if len(odd) > 3 else "")
        what = (f"a {type(obj).__name__}" if not isinstance(obj, dict) else "an empty dict" if not obj else
                f"a dict with non-tensor entries ({odd})")
        raise StoreError(f"{where} holds {what}, not a state dict (name -> tensor); save one with "
                         f"torch.save(model.state_dict(), path) or safetensors.torch.save_file")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_state(module: Any, path: str | Path, trust_pickle: bool = False) -> None:
    """Load the weights in ``path`` into ``module`` (strict); a mismatch says which keys and what to pass."""
    state = read_state_dict(path, trust_pickle)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        hint = ""
        if "size mismatch" in str(e):
            hint = (" The shapes differ: build the model with the checkpoint's settings, e.g. num_classes= "
                    "(CLI: --model-kwargs num_classes=10).")
        raise InputError(f"weights: '{path}' does not fit {type(module).__name__}: {_first_line(e)}.{hint}") from None


def load_model(spec: str, weights: str | None = None, model_kwargs: dict[str, Any] | None = None,
               trust_pickle: bool = False, env: str | None = None) -> Any:
    """A :class:`~interp_core.HookedModel` for a model spec (module docstring)."""
    from .boundary import as_hooked

    kwargs = dict(model_kwargs or {})
    prefix, sep, rest = str(spec).partition(":")
    if not sep or prefix not in MODEL_PREFIXES or not rest:
        import difflib

        close = difflib.get_close_matches(prefix, MODEL_PREFIXES, n=1)
        raise InputError(f"model: spec {spec!r} is not understood; use one of "
                         + ", ".join(f"'{p}:...'" for p in MODEL_PREFIXES)
                         + (f" (did you mean '{close[0]}:{rest}'?)" if close and sep else ""))
    if prefix in ("timm", "torchvision"):
        return importlib.import_module("vision").loading.load(spec, weights=weights, trust_pickle=trust_pickle,
                                                              **kwargs)
    if weights is not None:
        raise InputError(f"weights: --weights applies to timm:, torchvision: and py: models; {prefix}: models "
                         f"bring their own")
    if prefix == "vision":
        return importlib.import_module("vision.zoo").load(rest)
    if prefix == "rl":
        return importlib.import_module("rl.zoo").load(rest)
    if prefix == "py":
        mod_name, _, factory = rest.partition(":")
        if not factory:
            raise InputError(f"model: {spec!r} needs a factory: py:MODULE:FACTORY, e.g. py:mymodels:build")
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise InputError(f"model: cannot import {mod_name!r} ({e}); put it on PYTHONPATH") from None
        fn = getattr(module, factory, None)
        if not callable(fn):
            raise InputError(f"model: {mod_name!r} has no callable {factory!r}")
        model = fn(**kwargs)
        if weights is not None:
            load_state(model, weights, trust_pickle)
        return as_hooked(model.eval() if hasattr(model, "eval") else model)
    # sb3:ALGO:PATH.zip
    algo, _, path = rest.partition(":")
    if not path:
        raise InputError(f"model: {spec!r} needs a path: sb3:ALGO:PATH.zip, e.g. sb3:PPO:agent.zip")
    if not trust_pickle:
        raise InputError(f"model: {spec!r} is a stable-baselines3 zip, which holds pickles: loading it runs code from "
                         f"the file. Allow it if you trust the file with trust_pickle=True (CLI: --trust-pickle)")
    if not Path(path).exists():
        raise StoreError(f"model file '{path}' does not exist")
    cls = None
    for package in ("stable_baselines3", "sb3_contrib"):
        try:
            cls = getattr(importlib.import_module(package), algo, None)
        except ImportError:
            continue
        if cls is not None:
            break
    if cls is None:
        raise InputError(f"model: unknown stable-baselines3 algorithm {algo!r} (e.g. PPO, A2C, DQN, RecurrentPPO); "
                         f"install the rl extra for sb3-contrib")
    sb3_model = cls.load(path, device="cpu")
    agents = importlib.import_module("rl.agents")
    return agents.wrap(sb3_model, env_id=env)


def load_array(path: str | Path, what: str = "data") -> Any:
    """Arrays in a tensor file: a tensor, or a dict with ``x`` (and ``y``). Returns a tensor or ``(x, y)``."""
    import numpy as np
    import torch

    path = Path(path)
    if not path.exists():
        raise StoreError(f"{what} file '{path}' does not exist")
    suffix = path.suffix
    try:
        if suffix == ".npy":
            obj: Any = torch.from_numpy(np.load(path, allow_pickle=False))
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                obj = {k: torch.from_numpy(z[k]) for k in z.files}
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        elif suffix in (".pt", ".pth"):
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise InputError(f"{what}: '{path}' has an unknown type; use .pt, .safetensors, .npy, .npz, an image "
                             f"folder or env:ID")
    except InputError:
        raise
    except Exception as e:
        raise StoreError(f"{what} file '{path}' could not be read ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(obj, dict):
        if len(obj) == 1:
            return next(iter(obj.values()))
        x = next((obj[k] for k in ("x", "inputs", "images", "obs") if k in obj), None)
        y = next((obj[k] for k in ("y", "labels", "targets") if k in obj), None)
        if x is None:
            raise InputError(f"{what}: '{path}' holds {sorted(obj)}; name the inputs 'x' (and the labels 'y')")
        return x if y is None else (x, y)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return tuple(obj)
    if not torch.is_tensor(obj):
        raise InputError(f"{what}: '{path}' holds a {type(obj).__name__}, not a tensor or a dict of tensors")
    return obj


def load_data(spec: str, model: Any = None, image_size: int | None = None, steps: int = 512) -> Any:
    """Data for a data spec (module docstring): a tensor, ``(x, y)``, or an ImageFolder ``Dataset``."""
    path = Path(spec)
    if str(spec).startswith("env:"):
        env_id = str(spec)[4:]
        if model is None or not hasattr(model, "make_env"):
            raise InputError(f"data: {spec!r} is an environment; it needs an agent (an rl: or sb3: model)")
        rl = importlib.import_module("rl")
        rollout = rl.collect(model, env_id, steps=steps)
        return rollout.obs
    if path.is_dir():
        from torchvision import datasets, transforms

        size = image_size or _input_size(model)
        tf = [transforms.Resize((size, size))] if size else []
        return datasets.ImageFolder(str(path), transform=transforms.Compose([*tf, transforms.ToTensor()]))
    return load_array(path)


def _input_size(model: Any) -> int | None:
    module = getattr(model, "model", None)
    if module is None:
        return None
    pe = getattr(module, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is not None:
        return int(size[0])
    cfg = getattr(module, "pretrained_cfg", None) or {}
    if "input_size" in cfg:
        return int(cfg["input_size"][-1])
    return None
