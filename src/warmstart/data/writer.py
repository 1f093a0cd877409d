"""Write problems as ``warmstart-jsonl`` (the format :func:`write_problems` and the loader share)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from warmstart.atomic import atomic_write_text, write_via
from warmstart.data.rows import DataError
from warmstart.data.schema import Problem


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "x"


def write_problems(problems: Iterable[Problem], out_dir: str | os.PathLike, split: str) -> Path:
    """Write ``problems`` as ``<out_dir>/<split>.jsonl`` (format ``warmstart-jsonl``).

    PIL images are saved as PNG under ``images/<split>/``; image paths outside
    ``out_dir`` are copied there byte for byte (so the folder is self-contained), paths
    inside it are referenced where they are. Each problem keeps its own ``split`` field;
    the file name is ``split``. The JSONL file is written atomically. Returns its path.
    """
    out_dir = Path(out_dir)
    if not split or _safe_name(split) != split:
        raise ValueError(f"split {split!r} must be a plain file name (letters, digits, . _ -)")
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()
    lines = []
    for index, problem in enumerate(problems):
        rel_images = []
        for k, image in enumerate(problem.images):
            stem = f"{index:06d}_{_safe_name(problem.id)}_{k}"
            if isinstance(image, Image.Image):
                target = image_dir / f"{stem}.png"
                write_via(target, lambda tmp, image=image: image.save(tmp, format="PNG"))
            else:
                source = Path(image).resolve()
                if source.is_relative_to(root):
                    target = source
                else:
                    target = image_dir / f"{stem}{source.suffix.lower()}"
                    shutil.copyfile(source, target)
            rel_images.append(target.resolve().relative_to(root).as_posix())
        record = {
            "id": problem.id,
            "question": problem.question,
            "images": rel_images,
            "answer": problem.answer,
            "answer_type": problem.answer_type,
            "choices": list(problem.choices) if problem.choices is not None else None,
            "precision": problem.precision,
            "unit": problem.unit,
            "split": problem.split,
            "source": problem.source,
            "rationale": problem.rationale,
            "meta": problem.meta,
        }
        try:
            lines.append(json.dumps(record, ensure_ascii=False))
        except TypeError as exc:
            raise DataError(f"problem {problem.id!r}: field 'meta' is not JSON-serialisable: {exc}") from None
    target_file = out_dir / f"{split}.jsonl"
    atomic_write_text(target_file, "".join(line + "\n" for line in lines))
    return target_file
