"""Recipes: loading one (``load_recipe``, ``read_recipe``), ``--cfg-options`` as mmengine takes them, and the one
place that switches a GPU recipe to another machine: `--cfg-options` for `xtuner train`.

The recipes are the 8-GPU recipes (AMP, nccl, the released weights). Tests, the demo and anyone on a CPU run the same
files with the options built here:

    python -m xtuner.tools.train recipes/stage1_pitts.py --cfg-options $(python tools/run_options.py \\
        recipes/stage1_pitts.py --model-root tiny_models/llava-phi-3-mini-xtuner)
"""
from __future__ import annotations

import argparse
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from mmengine.config import Config
from mmengine.config.lazy import LazyAttr, LazyObject

MODEL_ROOT_VARIABLE = "llava_root"
# Recipe variables that name a model folder every model path lies under, in the order they are looked for:
# the LLaVA recipes' `llava_root`, the MiniCPM-V recipes' `model_root`.
MODEL_ROOT_VARIABLES = (MODEL_ROOT_VARIABLE, "model_root")


# mmengine parses a recipe that uses `read_base()` with a class-wide switch (``ConfigDict.lazy``) on: while it is on,
# every config read in the process, in any thread, returns unbuilt LazyObjects (an optimizer type read as the name
# "__name__"). The demo and paper_table parse recipes in threads side by side, so all parsing takes this lock.
_PARSING = threading.Lock()


def load_recipe(path: str | Path) -> Config:
    """``Config.fromfile(path)`` with every imported name built (classes and functions, not LazyObjects), parsed
    under the process-wide lock: safe to call and to read from several threads at once. For reading and building;
    mmengine cannot print or dump it (``pretty_text`` needs the unbuilt names: use ``Config.fromfile`` for that)."""
    with _PARSING:
        cfg = Config.fromfile(str(path))
        _build_lazy(cfg._cfg_dict)
    return cfg


class RecipeError(ValueError):
    """A file a tool cannot use as its recipe; the message names the file and what to do."""


def read_recipe(path: str | Path, retrieval: bool = False) -> Config:
    """``load_recipe`` for a tool that takes one kind of recipe: the stage-1/stage-2 LVLM recipes, or with
    ``retrieval`` the retrievers of ``recipes/retrieval/`` (a model with ``embed``). Anything else (a missing file,
    a ``.json``, a Python file that is no recipe or does not load, the other kind) is a ``RecipeError``."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} not found")
    if path.suffix != ".py":
        raise RecipeError(f"{path} is not an XTuner recipe (a .py config, e.g. recipes/stage1_pitts.py)")
    try:
        cfg = load_recipe(path)
    except Exception as error:  # noqa: BLE001  (a syntax error, an import that fails: all mean "not loadable")
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise RecipeError(f"{path} does not load as a recipe: {type(error).__name__}: {first_line}") from None
    model = cfg.get("model")
    model_type = model.get("type") if isinstance(model, dict) else None
    if model_type is None:
        raise RecipeError(f"{path} is not an XTuner recipe: it defines no model = dict(type=...)")
    name = model_type if isinstance(model_type, str) else model_type.__name__
    is_retriever = hasattr(model_type, "embed")
    if is_retriever and not retrieval:
        raise RecipeError(f"{path} is a retrieval recipe ({name}): this tool takes the stage-1/stage-2 recipes "
                          "(recipes/, recipes/minicpmv26/, recipes/ablations/); retrievers train with xtuner train "
                          "and are scored by eval/retrieve.py (docs/retrieval.md)")
    if retrieval and not is_retriever:
        raise RecipeError(f"{path} builds {name}, not a retriever: eval/retrieve.py takes recipes/retrieval/*.py")
    return cfg


def _build_lazy(node: Any) -> Any:
    if isinstance(node, (LazyObject, LazyAttr)):
        return node.build()
    if isinstance(node, dict):
        for key in list(dict.keys(node)):
            dict.__setitem__(node, key, _build_lazy(dict.__getitem__(node, key)))
    elif isinstance(node, list):
        node[:] = [_build_lazy(item) for item in node]
    elif isinstance(node, tuple):
        return type(node)(_build_lazy(item) for item in node)
    return node


def format_option(key: str, value: Any) -> str:
    """One ``key=value`` for mmengine's DictAction (tuples as ``(a,b)``, no spaces)."""
    if isinstance(value, (tuple, list)):
        inner = ",".join(format_option("", v)[1:] for v in value)
        text = f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    else:
        text = str(value)
    return f"{key}={text}"


def _strings(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{prefix}{k}.")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _strings(v, f"{prefix}{i}.")
    elif isinstance(node, str):
        yield prefix[:-1], node


def model_root_variable(cfg: Config) -> str | None:
    """The recipe variable naming the folder its model paths lie under (one of ``MODEL_ROOT_VARIABLES``), if any."""
    return next((name for name in MODEL_ROOT_VARIABLES if cfg.get(name)), None)


def model_root_options(cfg: Config, model_root: str) -> list[str]:
    """Point every path under the recipe's model root variable (``llava_root``: LLM, tokenizer, CLIP, processor,
    projector; ``model_root``: the MiniCPM-V folder) at ``model_root``; the built dicts hold copies of those strings,
    so each is patched where it sits."""
    variable = model_root_variable(cfg)
    if variable is None:
        raise KeyError(f"recipe has none of the variables {MODEL_ROOT_VARIABLES} to relocate")
    old_root = cfg.get(variable)
    options = []
    for key, value in _strings(cfg.to_dict()):
        if value.startswith(old_root) and key != variable:
            options.append(format_option(key, model_root + value[len(old_root):]))
    return options


def cpu_options(cfg: Config) -> list[str]:
    """fp32 ``OptimWrapper`` instead of AMP (which asserts a GPU), gloo, no pinned memory or worker processes."""
    optim = cfg.optim_wrapper
    optimizer = optim.optimizer
    optimizer_type = optimizer.type if isinstance(optimizer.type, str) else optimizer.type.__name__
    options = ["optim_wrapper._delete_=True", "optim_wrapper.type=OptimWrapper",
               f"optim_wrapper.optimizer.type={optimizer_type}",
               format_option("optim_wrapper.accumulative_counts", optim.get("accumulative_counts", 1))]
    options += [format_option(f"optim_wrapper.optimizer.{k}", v) for k, v in optimizer.items() if k != "type"]
    if optim.get("clip_grad"):
        options += [format_option(f"optim_wrapper.clip_grad.{k}", v) for k, v in optim.clip_grad.items()]
    options += ["env_cfg.dist_cfg.backend=gloo", "train_dataloader.pin_memory=False",
                "train_dataloader.num_workers=0"]
    if "torch_dtype" in cfg.model:  # the frozen weights' dtype (bfloat16 on GPUs)
        options.append("model.torch_dtype=float32")
    return options


def local_run_options(config: str, model_root: str | None = None, device: str = "cpu",
                      overrides: dict[str, Any] | None = None) -> list[str]:
    """All `--cfg-options` to run ``config`` here: model relocation, CPU switches, then caller overrides
    (later options win, so ``overrides`` may replace e.g. ``optim_wrapper.optimizer.lr``)."""
    cfg = load_recipe(config)
    options = model_root_options(cfg, model_root) if model_root else []
    if device == "cpu":
        options += cpu_options(cfg)
    options += [format_option(k, v) for k, v in (overrides or {}).items()]
    return options


def parse_cfg_options(options: Sequence[str] | dict | None) -> dict:
    """``key=value`` strings (as ``xtuner train --cfg-options`` takes them) or a dict, as a dict for mmengine."""
    if not options:
        return {}
    if isinstance(options, dict):
        return dict(options)
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    return parser.parse_args(["--cfg-options", *options]).cfg_options
