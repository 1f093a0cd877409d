"""Problem data: the schema, loaders for real formats, the synthetic world, prompts."""

from warmstart.data.schema import ANSWER_TYPES, AnswerType, Problem

__all__ = ["ANSWER_TYPES", "AnswerType", "Problem", "load_problems"]


def load_problems(*args, **kwargs):
    """See :func:`warmstart.data.loaders.load_problems`."""
    from warmstart.data.loaders import load_problems as _load

    return _load(*args, **kwargs)
