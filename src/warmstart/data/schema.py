"""The one problem record every loader produces and every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

AnswerType = Literal["choice", "integer", "float", "text", "expression"]
ANSWER_TYPES: tuple[str, ...] = ("choice", "integer", "float", "text", "expression")

ImageRef = Image.Image | Path


@dataclass(frozen=True)
class Problem:
    """One visual math problem.

    Attributes:
        id: unique within its source (e.g. Geometry3K folder name, MathVista ``pid``).
        question: question text as shown to the model, without image placeholders and
            without the choices (prompts add those).
        images: PIL images or paths to image files (loaded lazily with :meth:`load_images`).
        answer: ground truth. For ``choice`` problems this is the *letter* (``"B"``);
            for numeric problems the number as a string (``"42"``, ``"3.46"``).
        answer_type: how the answer is verified: ``choice``, ``integer``, ``float``,
            ``text`` or ``expression``.
        choices: the option texts in order (letter ``A`` is ``choices[0]``), or ``None``.
        precision: decimal places that count for ``float`` answers (MathVista rule), or ``None``.
        unit: unit of the answer (``"cm"``, ``"degrees"``), or ``None``.
        split: ``train``, ``validation``, ``test``, ``ood`` or the source's own split name.
        source: data set name (``geometry3k``, ``mathvista``, ``synthetic``, ...).
        rationale: a worked solution ``<think>...</think> \\boxed{...}`` for SFT, or ``None``.
        meta: free-form extra fields from the source (family, difficulty, ...), JSON-able.
    """

    id: str
    question: str
    images: tuple[ImageRef, ...]
    answer: str
    answer_type: AnswerType
    choices: tuple[str, ...] | None = None
    precision: int | None = None
    unit: str | None = None
    split: str = "test"
    source: str = "unknown"
    rationale: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"problem {self.id!r}: unknown answer_type {self.answer_type!r}; valid: {ANSWER_TYPES}"
            )
        if self.answer_type == "choice" and not self.choices:
            raise ValueError(f"problem {self.id!r}: answer_type 'choice' needs choices")

    @property
    def answer_text(self) -> str:
        """The ground truth as text: the choice text for multiple choice, else the answer."""
        if self.answer_type == "choice" and self.choices:
            idx = ord(self.answer.upper()) - ord("A")
            if 0 <= idx < len(self.choices):
                return self.choices[idx]
        return self.answer

    def load_images(self) -> list[Image.Image]:
        """The images as RGB PIL images (paths are opened here)."""
        out = []
        for im in self.images:
            if isinstance(im, Image.Image):
                out.append(im.convert("RGB"))
            else:
                with Image.open(im) as f:
                    out.append(f.convert("RGB"))
        return out
