"""Offline documents: the staged benchmark files under $SLMKIT_DATA/benchmarks, in the HF schema lm-eval reads.

Keyed by the stock task's (dataset_path, dataset_name), so every lm-eval task built on these datasets
(not only the suite's) runs without the Hub. Each loader returns {split: [records]} plus the files it
read; records are converted only where the staged format differs from the Hub dataset (see each
SOURCE.md). Errors name the file (and line) and the SLMKIT_DATA setting.
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from slmkit.errors import SlmkitError
from slmkit.paths import DATA_ENV, data_dir, sha256_file


@dataclass
class LocalDataset:
    splits: dict[str, list[dict]]
    files: list[Path] = field(default_factory=list)
    folder: str = ""

    def sha256(self) -> dict[str, str]:
        return {_rel(p): _sha(p) for p in self.files}


@lru_cache(maxsize=None)
def _sha(path: Path) -> str:
    return sha256_file(path)


def benchmarks_root() -> Path:
    root = data_dir() / "benchmarks"
    if not root.is_dir():
        raise SlmkitError(f"missing data folder {root} (set {DATA_ENV} to the folder that holds benchmarks/)")
    return root


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(benchmarks_root()))
    except ValueError:
        return str(path)


def _need(path: Path) -> Path:
    if not path.exists():
        raise SlmkitError(f"missing data file {path} (set {DATA_ENV} to the folder that holds benchmarks/)")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """JSON Lines (optionally gzipped); a bad line is reported with its file and line number."""
    _need(path)
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SlmkitError(f"{path}:{n}: malformed JSON line ({exc.msg})") from None
            if not isinstance(row, dict):
                raise SlmkitError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def read_csv(path: Path, columns: list[str]) -> list[dict]:
    """CSV with a header; every row must have exactly the header's fields (line number on error)."""
    _need(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise SlmkitError(f"{path}: empty CSV file")
        missing = [c for c in columns if c not in header]
        if missing:
            raise SlmkitError(f"{path}:1: header lacks column '{missing[0]}' (has {', '.join(header)})")
        rows = []
        for row in reader:
            if len(row) != len(header):
                raise SlmkitError(f"{path}:{reader.line_num}: malformed CSV row ({len(row)} fields, header has {len(header)})")
            rows.append(dict(zip(header, row)))
    return rows


def _require(path: Path, rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    for i, row in enumerate(rows, 1):
        for key in keys:
            if key not in row:
                raise SlmkitError(f"{path}:{i}: record lacks field '{key}'")
    return rows


# ---- one loader per staged dataset ---------------------------------------------------------


def _arc(name: str | None) -> LocalDataset:
    folder = {"ARC-Easy": "arc_easy", "ARC-Challenge": "arc_challenge"}.get(name or "")
    if folder is None:
        raise SlmkitError(f"allenai/ai2_arc config '{name}' has no local copy (known: ARC-Easy, ARC-Challenge)")
    root = benchmarks_root() / folder
    files = [root / f"{s}.jsonl" for s in ("train", "validation", "test")]
    keys = ("id", "question", "choices", "answerKey")
    return LocalDataset({p.stem: _require(p, read_jsonl(p), keys) for p in files}, files, folder)


def _piqa(name: str | None) -> LocalDataset:
    root = benchmarks_root() / "piqa"
    data, labels = root / "valid.jsonl", _need(root / "valid-labels.lst")
    rows = _require(data, read_jsonl(data), ("goal", "sol1", "sol2"))
    lines = [x.strip() for x in labels.read_text(encoding="utf-8").splitlines() if x.strip()]
    if len(lines) != len(rows):
        raise SlmkitError(f"{labels}: {len(lines)} labels for {len(rows)} records in {data.name}")
    out = []
    for n, (row, lab) in enumerate(zip(rows, lines), 1):
        if lab not in ("0", "1"):
            raise SlmkitError(f"{labels}:{n}: label must be 0 or 1, got {lab!r}")
        out.append({"goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(lab)})
    return LocalDataset({"validation": out}, [data, labels], "piqa")


def _hellaswag(name: str | None) -> LocalDataset:
    path = benchmarks_root() / "hellaswag" / "hellaswag_validation.jsonl.gz"
    rows = _require(path, read_jsonl(path), ("activity_label", "ctx_a", "ctx_b", "endings", "label"))
    return LocalDataset({"validation": rows}, [path], "hellaswag")


def _winogrande(name: str | None) -> LocalDataset:
    if name not in (None, "winogrande_xl"):
        raise SlmkitError(f"winogrande config '{name}' has no local copy (known: winogrande_xl)")
    path = benchmarks_root() / "winogrande" / "winogrande_xl_validation.jsonl"
    rows = _require(path, read_jsonl(path), ("sentence", "option1", "option2", "answer"))
    return LocalDataset({"validation": rows}, [path], "winogrande")


def _bbh(name: str | None) -> LocalDataset:
    path = _need(benchmarks_root() / "bbh" / "bbh" / f"{name}.json")
    try:
        examples = json.loads(path.read_text(encoding="utf-8"))["examples"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SlmkitError(f"{path}: expected a JSON object with an 'examples' list ({exc})") from None
    rows = [{"input": e["input"], "target": e["target"]} for e in examples]
    return LocalDataset({"test": rows}, [path], "bbh")


def _mmlu(name: str | None) -> LocalDataset:
    root = benchmarks_root() / "mmlu" / "data"
    cols = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
    splits, files = {}, []
    for split in ("test", "dev"):
        path = root / split / f"{name}_{split}.csv"
        out = []
        for n, r in enumerate(read_csv(path, cols), 2):
            if r["answer"] not in ("0", "1", "2", "3"):
                raise SlmkitError(f"{path}:{n}: answer must be 0-3, got {r['answer']!r}")
            out.append({"question": r["question"], "subject": name,
                        "choices": [r["choice0"], r["choice1"], r["choice2"], r["choice3"]], "answer": int(r["answer"])})
        splits[split], files = out, files + [path]
    return LocalDataset(splits, files, "mmlu")


def _gsm8k(name: str | None) -> LocalDataset:
    root = benchmarks_root() / "gsm8k"
    files = [root / "test.jsonl", root / "train.jsonl"]
    return LocalDataset({p.stem: _require(p, read_jsonl(p), ("question", "answer")) for p in files}, files, "gsm8k")


def _math(name: str | None) -> LocalDataset:
    path = benchmarks_root() / "math" / "test" / f"hendrycks_math_{name}_test.json"
    rows = _require(path, read_jsonl(path), ("problem", "level", "type", "solution"))
    return LocalDataset({"test": rows}, [path], "math")


def _humaneval(name: str | None) -> LocalDataset:
    path = benchmarks_root() / "humaneval" / "HumanEval.jsonl.gz"
    rows = _require(path, read_jsonl(path), ("task_id", "prompt", "canonical_solution", "test", "entry_point"))
    return LocalDataset({"test": rows}, [path], "humaneval")


def _mbpp(name: str | None) -> LocalDataset:
    if name not in (None, "full"):
        raise SlmkitError(f"mbpp config '{name}' has no local copy (known: full)")
    path = benchmarks_root() / "mbpp" / "mbpp.jsonl"
    rows = _require(path, read_jsonl(path), ("task_id", "text", "code", "test_list"))
    ranges = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600), "train": (601, 974)}  # HF "full" split
    splits = {s: [r for r in rows if lo <= int(r["task_id"]) <= hi] for s, (lo, hi) in ranges.items()}
    for s in splits:
        splits[s].sort(key=lambda r: int(r["task_id"]))
    return LocalDataset(splits, [path], "mbpp")


def _cmmlu(name: str | None) -> LocalDataset:
    root = benchmarks_root() / "cmmlu" / "data"
    cols = ["Question", "A", "B", "C", "D", "Answer"]
    splits, files = {}, []
    for split in ("test", "dev"):
        path = root / split / f"{name}.csv"
        splits[split] = [{c: r[c] for c in cols} for r in read_csv(path, cols)]  # drops the unnamed index column
        files.append(path)
    return LocalDataset(splits, files, "cmmlu")


def _ceval(name: str | None) -> LocalDataset:
    root = benchmarks_root() / "ceval"
    cols = ["id", "question", "A", "B", "C", "D", "answer"]
    splits, files = {}, []
    for split in ("val", "dev"):
        path = root / split / f"{name}_{split}.csv"
        rows = read_csv(path, cols)
        for n, r in enumerate(rows, 2):
            if not r["id"].isdigit():
                raise SlmkitError(f"{path}:{n}: id must be an integer, got {r['id']!r}")
            r["id"] = int(r["id"])
            r.setdefault("explanation", "")
        splits[split], files = rows, files + [path]
    return LocalDataset(splits, files, "ceval")


# stock dataset_path -> loader(dataset_name)
LOADERS: dict[str, Callable[[str | None], LocalDataset]] = {
    "allenai/ai2_arc": _arc, "ai2_arc": _arc,
    "baber/piqa": _piqa, "piqa": _piqa, "ybisk/piqa": _piqa,
    "Rowan/hellaswag": _hellaswag, "hellaswag": _hellaswag,
    "allenai/winogrande": _winogrande, "winogrande": _winogrande,
    "SaylorTwift/bbh": _bbh, "lukaemon/bbh": _bbh,
    "cais/mmlu": _mmlu, "hails/mmlu_no_train": _mmlu,
    "openai/gsm8k": _gsm8k, "gsm8k": _gsm8k,
    "EleutherAI/hendrycks_math": _math,
    "openai/openai_humaneval": _humaneval, "openai_humaneval": _humaneval,
    "google-research-datasets/mbpp": _mbpp, "mbpp": _mbpp,
    "haonan-li/cmmlu": _cmmlu,
    "ceval/ceval-exam": _ceval,
}

# the splits each loader returns, known without reading a file (task configs are written from these)
SPLITS: dict[Callable[[str | None], LocalDataset], tuple[str, ...]] = {
    _arc: ("train", "validation", "test"), _piqa: ("validation",), _hellaswag: ("validation",),
    _winogrande: ("validation",), _bbh: ("test",), _mmlu: ("test", "dev"), _gsm8k: ("test", "train"),
    _math: ("test",), _humaneval: ("test",), _mbpp: ("prompt", "test", "validation", "train"),
    _cmmlu: ("test", "dev"), _ceval: ("val", "dev"),
}


def has_local(dataset_path: str | None) -> bool:
    return dataset_path in LOADERS


def local_splits(dataset_path: str) -> tuple[str, ...]:
    """The split names the staged copy of `dataset_path` has (every config of it has the same ones)."""
    return SPLITS[LOADERS[dataset_path]]


@lru_cache(maxsize=None)
def load_local(dataset_path: str, dataset_name: str | None) -> LocalDataset:
    """The staged copy of one Hub dataset config (cached per process)."""
    if dataset_path not in LOADERS:
        raise SlmkitError(f"dataset '{dataset_path}' has no local copy under ${DATA_ENV}/benchmarks")
    return LOADERS[dataset_path](dataset_name)


def to_dataset_dict(local: LocalDataset, extra: dict[str, str] | None = None, task: str | None = None):
    """A `datasets.DatasetDict`; `extra` maps a missing split name to an existing one (fallback pools).

    Reading a split the staged copy lacks raises one SlmkitError line naming the task, folder and splits
    (whichever config asked for it: the task's own YAML or a group's override)."""
    import datasets

    out = {split: datasets.Dataset.from_list(rows) for split, rows in local.splits.items()}
    for missing, source in (extra or {}).items():
        out[missing] = out[source]
    result = _dataset_dict_class()(out)
    result.slmkit_about = (task, local.folder)
    return result


@lru_cache(maxsize=1)
def _dataset_dict_class():
    import datasets

    class LocalDatasetDict(datasets.DatasetDict):
        slmkit_about: tuple[str | None, str] = (None, "")

        def __missing__(self, split):
            task, folder = self.slmkit_about
            who = f"task '{task}': " if task else ""
            raise SlmkitError(f"{who}split '{split}' is missing from ${DATA_ENV}/benchmarks/{folder} "
                              f"(has: {', '.join(sorted(self))})")

    LocalDatasetDict.__qualname__ = LocalDatasetDict.__name__
    globals()[LocalDatasetDict.__name__] = LocalDatasetDict  # importable by name (pickle, copy)
    return LocalDatasetDict
