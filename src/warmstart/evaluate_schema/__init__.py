"""The ``eval.json`` file (schema ``warmstart.eval/v1``): records, JSON I/O, summary, paired comparison.

One file holds the evaluation of one model on one split. :mod:`warmstart.evaluate` runs
the model and fills :class:`ProblemResult` rows; this package turns them into the
summary (with bootstrap intervals from :mod:`warmstart.metrics`), writes and reads the
file, and compares two files problem by problem. It also defines the run-directory
names of eval files and training logs, so the writer (``study.py``) and the reader
(the report) share one definition. One module per job, every name importable from here:

* :mod:`.records`: the dataclasses of the file and :func:`validate` (cross-field rules);
* :mod:`.jsonio`: :func:`read_eval` / :func:`write_eval` (strict JSON, atomic writes);
* :mod:`.summary`: metric names, per-problem values, :func:`summarize`, :func:`build_eval`,
  :func:`paired_compare`;
* :mod:`.naming`: run-directory names (models, splits, files; the default arms).

File layout (JSON object; all keys required unless marked optional)
--------------------------------------------------------------------
``schema``      ``"warmstart.eval/v1"``. Readers refuse any other value; a change to the
                meaning or the set of keys below bumps the version.
``producer``    ``"warmstart <version>"`` of the code that wrote the file.
``created``     ISO-8601 UTC time the file was written (``2025-01-31T12:00:00Z``).
``model``       ``name``: the model's name in the study (``base``, ``opd+grpo``, ...);
                ``path``: checkpoint directory or hub id it was loaded from.
``data``        ``path``: problem file/folder; ``split``: split name (``validation``,
                ``ood``, ...); ``n_problems``: number of problems; ``problem_ids``: their ids
                in the order of ``per_problem`` (the order paired comparisons use).
``settings``    ``n``: sampled responses per problem (0 = greedy only); ``temperature``,
                ``top_p``, ``max_new_tokens``: sampling parameters of those samples;
                ``seed``: sampling seed; ``greedy``: whether one greedy (temperature 0)
                response per problem was decoded as well.
``bootstrap``   ``B`` resamples, ``seed`` and ``alpha`` of the summary's intervals
                (problems are the resampling unit; percentile intervals).
``per_problem`` one object per problem, in ``data.problem_ids`` order:
    ``id``        problem id; ``answer``: ground truth (as in the problem file);
    ``greedy``    ``null`` when ``settings.greedy`` is false, else
                  ``text`` (decoded response), ``extracted`` (final answer found in it, or
                  ``null``), ``correct``, ``format_ok`` (``<think>`` + ``\\boxed{}`` kept),
                  ``length`` (response tokens, EOS included), ``entropy_mean`` (mean
                  full-vocabulary entropy over those tokens, nats; ``null`` if not computed);
    ``samples``   exactly ``settings.n`` objects: ``extracted``, ``normalized`` (the
                  normalised answer used for diversity; unparseable = ``"none"``),
                  ``correct``, ``format_ok``, ``length``, ``entropy_mean`` and
                  ``entropy_sum`` (sum of the per-token entropies, nats; ``entropy_sum /
                  length`` = ``entropy_mean``; both ``null`` if not computed, 0 when
                  ``length`` is 0). Sample texts are not stored (size).
``summary``     metric name -> ``{"value", "lo", "hi"}``: the value and its 95% (1-alpha)
                bootstrap interval. Fractions are in [0, 1], not percent. Keys, in order
                (a key is absent when its inputs are: greedy ones without greedy,
                sampled ones when ``n`` = 0, entropy ones when entropies are ``null``):
    ``greedy_accuracy``      fraction of problems whose greedy answer is correct;
    ``greedy_format_rate``   fraction of greedy responses with the format kept;
    ``greedy_length_mean``   mean greedy response length (tokens);
    ``pass@k``               for k = 1, 2, 4, ... up to ``n`` (and ``n`` itself): unbiased
                             pass@k averaged over problems; ``pass@1`` is the mean sampled
                             accuracy;
    ``distinct_answers_mean`` mean over problems of the number of distinct normalised answers;
    ``answer_entropy_mean``  mean over problems of the Shannon entropy (nats) of the answers;
    ``entropy_token_mean``   policy entropy, token-weighted: all samples' entropy sums / all
                             their tokens (a ratio of sums, bootstrapped as such);
    ``entropy_seq_mean``     policy entropy, mean over problems of the mean over samples of
                             each sample's ``entropy_mean``;
    ``response_length_mean`` mean over problems of the mean sample length (tokens);
    ``format_rate``          mean over problems of the fraction of samples with format kept.
``teacher_forced_entropy`` optional (``null``): entropy of the model on a fixed probe set of
                reference responses: ``probe`` (its path or name), ``n_sequences``,
                ``n_tokens``, ``token_mean`` and ``seq_mean`` as ``{"value", "lo", "hi"}``
                (probe sequences are the resampling unit).

Numbers are finite: the writer refuses NaN/inf, so the file is strict JSON.

Run-directory naming: :mod:`warmstart.evaluate_schema.naming`.
"""

from __future__ import annotations

from warmstart.evaluate_schema.jsonio import read_eval, write_eval
from warmstart.evaluate_schema.naming import (
    BASE_MODEL,
    BLANK_SPLIT,
    DEFAULT_ARMS,
    REFERENCE_ARM,
    SPLITS,
    STAGE1_ARMS,
    STAGE2_SUFFIX,
    TEACHER_MODEL,
    eval_relpath,
    metrics_relpath,
    parse_eval_filename,
    stage1_arm,
    stage2_model,
    study_models,
)
from warmstart.evaluate_schema.records import (
    SCHEMA,
    BootstrapInfo,
    DataInfo,
    DecodingSettings,
    EvalResult,
    EvalSchemaError,
    GreedyResult,
    Interval,
    ModelInfo,
    ProblemResult,
    SampleResult,
    TeacherForcedEntropy,
    validate,
)
from warmstart.evaluate_schema.summary import (
    MetricInfo,
    build_eval,
    metric_info,
    metric_names,
    paired_compare,
    pass_k_values,
    problem_values,
    summarize,
    teacher_forced_summary,
)

__all__ = [
    "SCHEMA",
    "EvalSchemaError",
    "ModelInfo",
    "DataInfo",
    "DecodingSettings",
    "BootstrapInfo",
    "GreedyResult",
    "SampleResult",
    "ProblemResult",
    "Interval",
    "TeacherForcedEntropy",
    "EvalResult",
    "MetricInfo",
    "pass_k_values",
    "metric_names",
    "metric_info",
    "problem_values",
    "summarize",
    "teacher_forced_summary",
    "build_eval",
    "write_eval",
    "read_eval",
    "validate",
    "paired_compare",
    "BASE_MODEL",
    "TEACHER_MODEL",
    "DEFAULT_ARMS",
    "STAGE1_ARMS",
    "REFERENCE_ARM",
    "STAGE2_SUFFIX",
    "SPLITS",
    "BLANK_SPLIT",
    "stage2_model",
    "stage1_arm",
    "study_models",
    "eval_relpath",
    "parse_eval_filename",
    "metrics_relpath",
]
