"""lmms-eval's POPE, MME, SEED-Bench, GQA and MMMU-val tasks on local copies of their datasets.

The hub is not reachable from every evaluation machine, so the data is fetched once where it is
(``download``: ``datasets.load_dataset`` of the upstream task's ``dataset_path``/``dataset_name``
and test split, then ``save_to_disk`` under ``DATA_ROOT/<task>``) and the tasks are pointed at
those copies (``write``)::

    python -m semhitok_lmms_eval.local_tasks download --data-root /data/lmms
    python -m semhitok_lmms_eval.local_tasks write --data-root /data/lmms --out tasks_local
    python -m lmms_eval --model semhitok_qwen ... --include_path tasks_local --tasks pope_local

Design: ``write`` generates one small YAML per task that ``include:``s the *installed* upstream
task YAML by absolute path and overrides only ``task`` (``<name>_local``), ``dataset_path`` and
``dataset_kwargs: {load_from_disk: true}``. Prompts, generation settings and metrics therefore
stay exactly lmms-eval's. Generated rather than static YAMLs because ``include:`` needs the
absolute path of the installed lmms-eval and ``dataset_path`` the user's data root. Contracts
(lmms-eval 0.7.3): ``utils.load_yaml_config`` merges an absolute ``include`` under the including
file's keys and resolves the included file's ``!function``s next to it; ``api/task.py``
``ConfigurableTask.download`` calls ``datasets.load_from_disk(dataset_path)`` (ignoring
``dataset_name``) when ``load_from_disk`` is set and expects a ``DatasetDict`` keyed by split;
``tasks/__init__.py`` ``TaskManager`` indexes every ``*.yaml`` under ``--include_path``.

GQA's upstream ``process_docs`` joins the question rows with a second hub dataset of images
(``testdev_balanced_images``); ``download`` performs that join before saving, and the local task
sets ``process_docs: null``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class LocalTask:
    name: str  # upstream task name; the local task is ``<name>_local``
    upstream_yaml: str  # relative to lmms_eval/tasks
    joins_gqa_images: bool = False

    @property
    def local_name(self) -> str:
        return f"{self.name}_local"


TASKS = {
    t.name: t
    for t in (
        LocalTask("pope", "pope/pope.yaml"),
        LocalTask("mme", "mme/mme.yaml"),
        LocalTask("seedbench", "seedbench/seedbench.yaml"),
        LocalTask("gqa", "gqa/gqa.yaml", joins_gqa_images=True),
        LocalTask("mmmu_val", "mmmu/mmmu_val.yaml"),
    )
}
GQA_IMAGES = "testdev_balanced_images"  # the image table lmms_eval/tasks/gqa/utils.py joins


def upstream_yaml(task: LocalTask) -> Path:
    import lmms_eval.tasks

    path = Path(lmms_eval.tasks.__file__).parent / task.upstream_yaml
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this lmms-eval is not 0.7.3-compatible")
    return path


def local_config(task: LocalTask, data_root: Path) -> dict:
    """The overriding YAML of one local task."""
    config = {
        "include": str(upstream_yaml(task)),
        "task": task.local_name,
        "dataset_path": str((data_root / task.name).resolve()),
        "dataset_kwargs": {"load_from_disk": True},
    }
    if task.joins_gqa_images:
        config["process_docs"] = None
    return config


def write(data_root: Path, out: Path, names: Iterable[str] = TASKS) -> list[Path]:
    """One ``<name>_local.yaml`` per task in ``out`` (the folder to pass as ``--include_path``)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        task = TASKS[name]
        path = out / f"{task.local_name}.yaml"
        path.write_text(yaml.safe_dump(local_config(task, data_root), sort_keys=False))
        paths.append(path)
    return paths


def download(data_root: Path, names: Iterable[str] = TASKS) -> list[Path]:
    """Fetch each task's test split from the hub and ``save_to_disk`` it as a DatasetDict."""
    import datasets
    from lmms_eval.utils import load_yaml_config

    paths = []
    for name in names:
        task = TASKS[name]
        config = load_yaml_config(str(upstream_yaml(task)), mode="simple")
        path, split = config["dataset_path"], config["test_split"]
        rows = datasets.load_dataset(path, config.get("dataset_name"), split=split)
        if task.joins_gqa_images:
            rows = join_gqa_images(rows, datasets.load_dataset(path, GQA_IMAGES, split=split))
        target = data_root / task.name
        datasets.DatasetDict({split: rows}).save_to_disk(str(target))
        paths.append(target)
    return paths


def join_gqa_images(questions, images):
    """GQA question rows with their image in an ``image`` column (what upstream's
    ``gqa_process_docs`` adds at load time from the hub)."""
    by_id = dict(zip(images["id"], range(len(images)), strict=True))
    return questions.map(lambda row: {"image": images[by_id[row["imageId"]]]["image"]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m semhitok_lmms_eval.local_tasks")
    parser.add_argument("command", choices=("download", "write"))
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="task folder (write)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
    args = parser.parse_args(argv)
    names = args.tasks.split(",")
    if unknown := sorted(set(names) - set(TASKS)):
        parser.error(f"unknown tasks {unknown}; choose from {', '.join(TASKS)}")
    if args.command == "write":
        if args.out is None:
            parser.error("write needs --out")
        paths = write(args.data_root, args.out, names)
    else:
        paths = download(args.data_root, names)
    print("\n".join(map(str, paths)))


if __name__ == "__main__":
    main()
