"""The training state of a checkpoint: model and optimizer, full or sharded, and train_state.pt.

Two layouts of the model and optimizer inside a `step-XXXXXXXX/` directory (compactlm.checkpoint.layout
names the files; config.json and the tokenizer are written by compactlm.checkpoint.model):

- full: `model.safetensors` (what `from_pretrained` reads) and the optimizer in train_state.pt.
  Rank 0 gathers everything and writes it; the default for a single process.
- sharded: `dcp/`, a `torch.distributed.checkpoint` (DCP) directory. Every rank writes its own
  shards in parallel, in the background if asked (the step goes on while the files are written);
  the default under FSDP, where no rank ever holds the whole model.

Both are keyed by parameter name, never by position, so either layout loads into a plain, DDP or
FSDP model on any number of ranks: DCP reshards on load (save on 2 ranks, resume on 1 or 3), and a
full checkpoint is split across the ranks as it is loaded. `from_pretrained` consolidates a sharded
checkpoint into one model on the fly (`compactlm convert consolidate` writes it out).

DCP's `.metadata` file is a pickle; it is read here with an allow-list unpickler (the approach of
`torch.load(weights_only=True)`), so a doctored checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import builtins
import collections
import importlib
import io
import pathlib
import pickle
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from compactlm.checkpoint.io import load_safetensors, load_torch_weights
from compactlm.checkpoint.layout import DCP_DIR, STATE_FILE, WEIGHTS_FILE, is_sharded
from compactlm.errors import CheckpointError, first_line

# What resuming reads from train_state.pt (it indexes into these and hands rng_cpu to torch.set_rng_state),
# with their types; "optimizer" is there in full-format checkpoints only.
STATE_TYPES = {"step": int, "tokens_seen": int, "data": dict, "nonfinite_total": int, "nonfinite_run": int,
               "rng_cpu": torch.Tensor}


# ---- train_state.pt -------------------------------------------------------------------------------
def write_train_state(directory: Path, state: dict) -> None:
    torch.save(state, Path(directory) / STATE_FILE)


def read_train_state(checkpoint: Path) -> dict:
    """train_state.pt of a checkpoint, loaded without running code, with its keys checked."""
    path = Path(checkpoint) / STATE_FILE
    try:  # read whole, not memory-mapped: the optimizer keeps these tensors and updates them in place
        state = load_torch_weights(path, mmap=False)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; the checkpoint is damaged: delete its directory to resume from the one "
                              "before") from None
    missing = [k for k in STATE_TYPES if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a compactlm training state (missing {', '.join(missing)})")
    kinds = {**STATE_TYPES, "optimizer": dict}
    wrong = [k for k, kind in kinds.items()
             if k in state and (not isinstance(state[k], kind) or isinstance(state[k], bool))]
    if not wrong and state["rng_cpu"].dtype != torch.uint8:
        wrong = ["rng_cpu"]
    if wrong:
        raise CheckpointError(f"{path}: not a compactlm training state ({', '.join(wrong)} of the wrong type)")
    return state


# ---- safe metadata --------------------------------------------------------------------------------
class _MetadataUnpickler(pickle.Unpickler):
    """Builds only DCP's metadata records, sizes, dtypes and plain containers; refuses anything else."""

    _BUILTINS = {"set", "frozenset", "slice", "list", "dict", "tuple", "int", "float", "str", "bytes", "bool"}
    _DCP_RECORDS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo")}  # besides .metadata's

    def find_class(self, module: str, name: str):
        if module == "torch.distributed.checkpoint.metadata" or (module, name) in self._DCP_RECORDS:
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type):  # a metadata record class or enum, never a function
                return obj
        elif module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), (torch.dtype, torch.layout))):
            return getattr(torch, name)
        elif module == "torch.serialization" and name == "_get_layout":  # looks a layout up by its name
            return torch.serialization._get_layout
        elif module == "pathlib" and name in ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"):
            return getattr(pathlib, name)  # the checkpoint id, recorded as a path
        elif module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        elif module == "builtins" and name in self._BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from checkpoint metadata")


class SafeFileSystemReader(dcp.FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        path = Path(self.path) / ".metadata"
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable or unsafe DCP metadata ({exc})") from None
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _reader(directory: Path) -> SafeFileSystemReader:
    """A reader of a DCP directory whose metadata was checked here, so a bad file fails with one line
    (inside dcp.load the error would come back wrapped in a per-rank traceback)."""
    reader = SafeFileSystemReader(directory)
    reader.read_metadata()
    return reader


def _dcp_load(state: dict, directory: Path) -> None:
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*load in a single process")
        dcp.load(state, storage_reader=_reader(directory), no_dist=not dist.is_initialized())


# ---- save -----------------------------------------------------------------------------------------
def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, tied: bool) -> tuple[dict, dict]:
    """Whole model and optimizer state on rank 0's CPU (other ranks get empty dicts). Collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=options)
    if tied:
        model_sd.pop("lm_head.weight", None)  # stored once, as the embedding (checkpoint.io.model_state_dict)
    return {k: v.contiguous() for k, v in model_sd.items()}, optim_sd


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory: Path,
                 background: bool = False, process_group=None):
    """Every rank writes its shards under directory/dcp. Collective. Returns a future when background."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    writer = dcp.FileSystemWriter(Path(directory) / DCP_DIR)
    no_dist = not dist.is_initialized()
    if background:
        return dcp.async_save(state, storage_writer=writer, process_group=process_group, no_dist=no_dist)
    dcp.save(state, storage_writer=writer, no_dist=no_dist)
    return None


# ---- load -----------------------------------------------------------------------------------------
def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, path: Path,
                        full_optimizer_state: dict | None, tied: bool) -> None:
    """Restore model and optimizer from either layout, whatever the number of ranks. Collective."""
    path = Path(path)
    if is_sharded(path):
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        _dcp_load(state, path / DCP_DIR)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        return
    if full_optimizer_state is None:
        raise CheckpointError(f"{path}: neither a dcp/ directory nor an optimizer state in train_state.pt")
    model_sd = load_safetensors(path / WEIGHTS_FILE)
    if tied:
        model_sd["lm_head.weight"] = model_sd["embed.weight"]
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=full_optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


def load_sharded_weights(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill `state` (name -> preallocated tensor) with the model tensors of a sharded checkpoint."""
    wrapped = {"model": state}
    try:
        _dcp_load(wrapped, Path(path) / DCP_DIR)
    except CheckpointError:
        raise
    except Exception as exc:  # DCP wraps per-rank failures in CheckpointException
        raise CheckpointError(f"{path / DCP_DIR}: cannot load the model from this sharded checkpoint "
                              f"({first_line(exc)})") from None
    return wrapped["model"]
