"""Chat messages and prompt text for a :class:`Problem`.

The same prompt serves a 7B Qwen2.5-VL and the toy models, whose contexts are about
100 tokens: so the system prompt and the instruction are deliberately short. The
instruction asks for reasoning in ``<think>...</think>`` and the final answer in
``\\boxed{}`` (the letter for multiple choice), which is what the grader extracts.

The precision and unit of an answer are not spelled out in the prompt (unlike
MathVista's own ``query`` hints): the grader applies the problem's precision, and
the words would not fit the toy contexts.
"""

from __future__ import annotations

from typing import Any

from warmstart.data.schema import Problem

SYSTEM_PROMPT = "You solve math problems about images."
INSTRUCTION = "Reason inside <think></think>, then put the final answer in \\boxed{}."
CHOICE_INSTRUCTION = "Reason inside <think></think>, then put the answer letter in \\boxed{}."
# Image marker of the plain fallback format when the processor names none.
FALLBACK_IMAGE_TOKEN = "<image>"


def choice_lines(choices: tuple[str, ...]) -> str:
    """``"A. first\\nB. second"``: one line per choice, lettered from A."""
    return "\n".join(f"{chr(ord('A') + i)}. {text}" for i, text in enumerate(choices))


def user_text(problem: Problem) -> str:
    """The user turn's text: question, lettered choices (if any), then the instruction."""
    parts = [problem.question.strip()]
    if problem.choices:
        parts.append(choice_lines(problem.choices))
    parts.append(CHOICE_INSTRUCTION if problem.answer_type == "choice" else INSTRUCTION)
    return "\n".join(parts)


def build_messages(problem: Problem) -> list[dict[str, Any]]:
    """Chat messages in the transformers multimodal format.

    ``[{"role": "system", ...}, {"role": "user", "content": [{"type": "image"} per image,
    {"type": "text", "text": user_text(problem)}]}]``. Image entries are placeholders:
    the processor receives the images themselves separately.
    """
    content: list[dict[str, Any]] = [{"type": "image"} for _ in problem.images]
    content.append({"type": "text", "text": user_text(problem)})
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": content},
    ]


def plain_prompt(problem: Problem, image_token: str = FALLBACK_IMAGE_TOKEN) -> str:
    """The fallback prompt for processors without a chat template.

    Format (``<img>`` is ``image_token``, repeated once per image)::

        {SYSTEM_PROMPT}
        User: <img>{user text}
        Assistant:

    with a trailing space after ``Assistant:`` so the response starts a new word.
    """
    images = image_token * len(problem.images)
    return f"{SYSTEM_PROMPT}\nUser: {images}{user_text(problem)}\nAssistant: "


def prompt_text(problem: Problem, processor: Any = None) -> str:
    """The prompt string a model is fed for ``problem`` (generation prompt included).

    Uses ``processor.apply_chat_template(build_messages(problem), tokenize=False,
    add_generation_prompt=True)`` when ``processor`` has a chat template; otherwise
    (no processor, or no template) :func:`plain_prompt` with the processor's
    ``image_token`` when it has one.
    """
    if processor is not None and getattr(processor, "chat_template", None):
        return processor.apply_chat_template(
            build_messages(problem), tokenize=False, add_generation_prompt=True
        )
    image_token = getattr(processor, "image_token", None) or FALLBACK_IMAGE_TOKEN
    return plain_prompt(problem, image_token)
