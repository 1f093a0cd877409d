"""Prompts: exact message content, the chat-template path and the plain fallback."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from warmstart.data.prompts import (
    CHOICE_INSTRUCTION,
    INSTRUCTION,
    SYSTEM_PROMPT,
    build_messages,
    prompt_text,
)
from warmstart.data.schema import Problem

CHOICE = Problem(
    id="c1",
    question="Find x. ",
    images=(Path("img.png"),),
    answer="B",
    answer_type="choice",
    choices=("3", "2\\sqrt{3}", "5"),
)
FREE = Problem(
    id="f1",
    question="The side is 3. What is the perimeter?",
    images=(Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))),
    answer="9",
    answer_type="integer",
)
TEXT_ONLY = Problem(id="t1", question="What is 2+2?", images=(), answer="4", answer_type="integer")


class StubProcessor:
    """Records the call the way a transformers processor with a chat template receives it."""

    chat_template = "{{ stub }}"

    def __init__(self) -> None:
        self.calls: list[tuple[list, dict]] = []

    def apply_chat_template(self, messages: list, **kwargs) -> str:
        self.calls.append((messages, kwargs))
        return "<rendered>"


def test_choice_problem_messages_exactly() -> None:
    assert build_messages(CHOICE) == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Find x.\nA. 3\nB. 2\\sqrt{3}\nC. 5\n" + CHOICE_INSTRUCTION},
            ],
        },
    ]


def test_free_form_problem_has_one_placeholder_per_image_and_no_choices() -> None:
    user = build_messages(FREE)[1]
    assert user["role"] == "user"
    assert user["content"][:2] == [{"type": "image"}, {"type": "image"}]
    assert user["content"][2] == {
        "type": "text",
        "text": "The side is 3. What is the perimeter?\n" + INSTRUCTION,
    }
    assert build_messages(TEXT_ONLY)[1]["content"] == [
        {"type": "text", "text": "What is 2+2?\n" + INSTRUCTION}
    ]


def test_instructions_are_short_and_name_the_output_format() -> None:
    for instruction in (INSTRUCTION, CHOICE_INSTRUCTION):
        assert "<think></think>" in instruction and "\\boxed{}" in instruction
        assert len((SYSTEM_PROMPT + " " + instruction).split()) < 25
    assert "letter" in CHOICE_INSTRUCTION and "letter" not in INSTRUCTION


def test_prompt_text_uses_the_chat_template() -> None:
    processor = StubProcessor()
    assert prompt_text(CHOICE, processor) == "<rendered>"
    [(messages, kwargs)] = processor.calls
    assert messages == build_messages(CHOICE)
    assert kwargs == {"tokenize": False, "add_generation_prompt": True}


def test_prompt_text_plain_fallback() -> None:
    expected = f"{SYSTEM_PROMPT}\nUser: <image><image>The side is 3. What is the perimeter?\n{INSTRUCTION}\nAssistant: "
    assert prompt_text(FREE) == expected

    class NoTemplate:
        chat_template = None
        image_token = "<|image_pad|>"

    assert prompt_text(CHOICE, NoTemplate()) == (
        f"{SYSTEM_PROMPT}\nUser: <|image_pad|>Find x.\nA. 3\nB. 2\\sqrt{{3}}\nC. 5\n{CHOICE_INSTRUCTION}\nAssistant: "
    )
