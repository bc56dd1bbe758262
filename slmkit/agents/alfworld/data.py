"""ALFWorld's game files, unpacked once into SLMKIT_CACHE in the layout alfworld expects ($ALFWORLD_DATA).

SLMKIT_DATA/alfworld holds the json_2.1.1 tars (ExpeL's copy, see its SOURCE.md) and the `logic/` files.
They are verified by sha256, then unpacked atomically into

    SLMKIT_CACHE/alfworld/json_2.1.1-<digest>/json_2.1.1/{valid_seen,valid_unseen,valid_train}/...
    SLMKIT_CACHE/alfworld/json_2.1.1-<digest>/logic/{alfred.pddl,alfred.twl2}

`<digest>` is taken from the tars' hashes, so other data never reuses an old folder. A user with the
official download (`alfworld-download`) points `data=` at their $ALFWORLD_DATA instead.

`react_config(root)` is ReAct's base_config.yaml (ysymyth/ReAct) as a dict, with the paths resolved under
`root`: the part of it that `AlfredTWEnv` reads (dataset paths, logic files, env section, training method
and step limits), with ReAct's values.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.paths import DATA_ENV, atomic_dir, atomic_write_json, cache_dir, data_dir, read_json, sha256_file

# the tars in SLMKIT_DATA/alfworld and their sha256 (from its SOURCE.md)
ARCHIVES = {
    "valid_seen": ("json_2.1.1_valid_seen.tar.gz", "d762acb0f7c97bc0e55747cf938f87bf73323d70fcf6a7083bc181973b68af96"),
    "valid_unseen": ("json_2.1.1_valid_unseen.tar.gz", "36d934928f4584f052e733111a1a0ecad9e38e6b5a8b85a136bba835683f970d"),
    "valid_train": ("json_2.1.1_valid_train.tar.gz", "b8837820340d21b6aed0d459306a56b4ccf79d426076890d4fb6c2420672ecba"),
}
LOGIC_FILES = ("alfred.pddl", "alfred.twl2")
MANIFEST = "SLMKIT_ALFWORLD.json"

# split name (AlfredTWEnv's train_eval) -> folder under json_2.1.1. ReAct's "train" is the full ALFRED train
# set, which is not here; "train" gives ExpeL's 200-game subset of it (valid_train), not an official split.
SPLITS = {"eval_out_of_distribution": "valid_unseen", "eval_in_distribution": "valid_seen", "train": "valid_train"}
SPLIT_ALIASES = {"valid_unseen": "eval_out_of_distribution", "valid_seen": "eval_in_distribution",
                 "valid_train": "train", "ood": "eval_out_of_distribution", "id": "eval_in_distribution"}


def source_dir() -> Path:
    path = data_dir() / "alfworld"
    if not path.is_dir():
        raise SlmkitError(f"missing data folder {path} (set {DATA_ENV} to the folder that holds alfworld/)")
    return path


def _verified(path: Path, sha: str) -> Path:
    if not path.is_file():
        raise SlmkitError(f"missing ALFWorld archive {path} (set {DATA_ENV} to the folder that holds alfworld/)")
    got = sha256_file(path)
    if got != sha:
        raise SlmkitError(f"{path}: sha256 {got[:12]}... does not match the expected {sha[:12]}... (corrupt or other data)")
    return path


def _digest() -> str:
    h = hashlib.sha256()
    for name, (_, sha) in sorted(ARCHIVES.items()):
        h.update(f"{name}:{sha}\n".encode())
    return h.hexdigest()[:12]


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
                raise SlmkitError(f"{archive}: unexpected entry {member.name!r} (not a plain file under json_2.1.1/)")
            if parts[0] != "json_2.1.1":
                raise SlmkitError(f"{archive}: entry {member.name!r} is not under json_2.1.1/")
        tar.extractall(dest, filter="data")


def alfworld_data_dir(rebuild: bool = False) -> Path:
    """The unpacked $ALFWORLD_DATA folder under SLMKIT_CACHE, built once (verified, atomic)."""
    src = source_dir()
    folder = cache_dir() / "alfworld" / f"json_2.1.1-{_digest()}"
    manifest = folder / MANIFEST
    if not rebuild and manifest.is_file():
        info = read_json(manifest)
        if info.get("archives") == {k: v[1] for k, v in ARCHIVES.items()} and all(
            (folder / "json_2.1.1" / split).is_dir() for split in ARCHIVES
        ):
            return folder
    archives = {split: _verified(src / name, sha) for split, (name, sha) in ARCHIVES.items()}
    logic = [src / name for name in LOGIC_FILES]
    for path in logic:
        if not path.is_file():
            raise SlmkitError(f"missing ALFWorld logic file {path}")
    with atomic_dir(folder) as tmp:
        for split, archive in archives.items():
            _safe_extract(archive, tmp)
            if not (tmp / "json_2.1.1" / split).is_dir():
                raise SlmkitError(f"{archive}: no json_2.1.1/{split}/ inside")
        (tmp / "logic").mkdir()
        for path in logic:
            shutil.copyfile(path, tmp / "logic" / path.name)
        atomic_write_json(tmp / MANIFEST, {"archives": {k: v[1] for k, v in ARCHIVES.items()},
                                           "logic": {p.name: sha256_file(p) for p in logic}, "source": str(src)})
    return folder


def resolve_split(split: str) -> str:
    name = SPLIT_ALIASES.get(split, split)
    if name not in SPLITS:
        known = ", ".join(list(SPLITS) + list(SPLIT_ALIASES))
        raise SlmkitError(f"alfworld: unknown split {split!r} (known: {known})")
    return name


def check_root(root: Path, split: str) -> Path:
    """An $ALFWORLD_DATA folder must hold json_2.1.1/<split folder>/ for the split asked for."""
    root = Path(root).expanduser()
    folder = root / "json_2.1.1" / SPLITS[split]
    if not folder.is_dir():
        raise SlmkitError(f"alfworld data {root}: no json_2.1.1/{SPLITS[split]}/ for split {split}")
    return root


def react_config(root: Path) -> dict:
    """ReAct's base_config.yaml, the fields AlfredTWEnv reads, paths under `root` ($ALFWORLD_DATA)."""
    games = Path(root) / "json_2.1.1"
    return {
        "dataset": {
            "data_path": str(games / SPLITS["train"]),  # ReAct: json_2.1.1/train (absent here)
            "eval_id_data_path": str(games / "valid_seen"),
            "eval_ood_data_path": str(games / "valid_unseen"),
            "num_train_games": -1,
            "num_eval_games": -1,
        },
        "logic": {"domain": str(Path(root) / "logic" / "alfred.pddl"),
                  "grammar": str(Path(root) / "logic" / "alfred.twl2")},
        "env": {
            "type": "AlfredTWEnv",
            "regen_game_files": False,
            "domain_randomization": False,
            "task_types": [1, 2, 3, 4, 5, 6],
            "expert_timeout_steps": 150,
            "expert_type": "handcoded",
            "goal_desc_human_anns_prob": 0.0,
        },
        "controller": {"type": "oracle", "debug": False, "load_receps": True},
        "general": {"random_seed": 42, "use_cuda": True, "visdom": False, "task": "alfred",
                    "training_method": "dagger", "observation_pool_capacity": 3, "hide_init_receptacles": False},
        "rl": {"action_space": "admissible", "training": {"max_nb_steps_per_episode": 50}},
        "dagger": {"action_space": "generation", "training": {"max_nb_steps_per_episode": 50}},
    }
