"""Teacher scorers: the log-prob a teacher gives to every token a student sampled.

On-policy distillation needs ``log pi_teacher(y_t | prompt, y_<t)`` for each sampled
response token ``y_t``. Two backends sit behind one :class:`Scorer` protocol, so the
OPD stage never knows which one runs:

* :class:`InProcessScorer`: a model in this process (the toy teacher, or any model
  ``load_policy`` loads), scored with :func:`warmstart.scoring.score_rollouts`.
* :class:`HTTPScorer`: a remote teacher behind the OpenAI-compatible chat API of a
  vLLM server (e.g. Qwen2.5-VL-72B), or ``warmstart serve`` which speaks the same
  subset of the protocol (``protocol="chat"``); or behind :mod:`warmstart.vllm_server`
  (``warmstart serve --engine vllm``), which scores the student's exact token ids and
  images (``protocol="tokens"``, below).

The HTTP protocol (vLLM's ``prompt_logprobs`` extension of chat completions)
--------------------------------------------------------------------------------
One request per rollout row::

    POST {base_url}/v1/chat/completions
    {"model": ..., "messages": [<problem messages, images as data: URLs>,
                                {"role": "assistant", "content": <response text + terminator>}],
     "continue_final_message": true, "add_generation_prompt": false,
     "max_tokens": 1, "prompt_logprobs": 0}

``continue_final_message`` renders the chat so that it ends inside the assistant
message (no closing ``<|im_end|>`` from the template), so the response tokens are the
tail of the prompt, and the server's ``prompt_logprobs`` (a list, one entry per prompt
token: ``None`` for the first, else ``{"<token id>": {"logprob", "rank",
"decoded_token"}, ...}`` holding the actual prompt token) carries the teacher's
log-prob of each of them. No tokens are generated that we use (``max_tokens`` 1 is
the smallest the API allows).

**The EOS token and the terminator.** A row that finished with ``"stop"`` ends with
the student's EOS token (``<|im_end|>`` for Qwen), and the teacher should score it
too: that is where it says "the answer is complete". The template adds no closing
token under ``continue_final_message``, so the client appends the EOS token's *text*
to the assistant content; HF and vLLM tokenizers parse special-token text in the
prompt as the special token itself (checked against the toy tokenizer in the tests),
so the teacher sees the very id the student sampled. Rows cut off by ``"length"``
get the same EOS text appended as a *terminator* whose position is then ignored.
The terminator is there because chat-template code trims trailing whitespace of the
continued message in some versions (transformers < 5 and the vLLM builds that use
it strip the final message): a truncated response ending in a space or newline would
lose its last tokens. With a special token last, nothing of the response is trailing.
So the scored span is the last ``n`` prompt positions for ``stop`` rows and the ``n``
positions before the last one for ``length`` rows (``n`` = real response tokens).

**Token alignment.** The request carries text, so the server re-tokenises it. The
teacher's token ids for the scored span must equal the student's response ids,
otherwise the log-probs belong to different tokens. Every row is checked and a
mismatch raises :class:`TeacherError` naming the row, the problem and the first
differing position. Causes: a teacher with another tokenizer, or a student that
sampled a non-canonical split of its own text (e.g. ``"a" "b"`` where the tokenizer
has ``"ab"``), or bytes that are not valid UTF-8 on their own. A text protocol
cannot carry those last two; the error says which cause applies when the student's
tokenizer is given.

**Reply validation.** Every reply is checked before its numbers are used, and each
failure raises :class:`TeacherError` naming the URL and the row (batch row and problem
id):

* every scored log-prob is finite and ``<= LOGPROB_TOLERANCE`` (``1e-4``): a log-prob
  is never positive, but a log-softmax of a near-certain token can round a hair above
  0 in float32; such values are kept unchanged (so valid runs are bit-identical);
* the reply has exactly as many positions as the server says the prompt has
  (``usage.prompt_tokens``, which vLLM always sends, and ``prompt_token_ids`` where
  given);
* when the student's ids do not line up with the teacher's, a reply that holds them
  shifted by a whole number of positions (rigidly, over at least ``min(n, 3)``
  positions) is reported as *too short* or *too long* (a truncated or padded reply),
  not as a tokenizer difference.

The exact-token protocol (``protocol="tokens"``)
------------------------------------------------
The text protocol above cannot carry a sampled token sequence that is not the canonical
encoding of its text (the row then fails the alignment check; a real student samples
such rows, at 7B too), and one such row aborts an OPD run. With ``protocol="tokens"``
the scorer talks to :mod:`warmstart.vllm_server` (``warmstart serve --engine vllm``):
one request per ``batch_size`` rows::

    POST {base_url}/score
    {"prompts": [{"token_ids": <the student's prompt ids, image pads expanded> + <response ids>,
                  "images": [<base64 PNG>, ...], "score_from": <prompt length>}, ...],
     "suppress_token_ids": <rollouts.suppressed_ids>}
    -> {"results": [{"logprobs": [<log p of each response token>]}, ...]}

The teacher scores the student's very token ids, image included: nothing is
re-tokenised, so there is nothing to align (the server checks that its image expansion
gives back the same prompt length). The suppressed ids get the same ``SUPPRESS_LOGIT``
as in :class:`InProcessScorer`, so a vLLM teacher's numbers are the in-process
teacher's (within float noise; 2e-3 nats is the tested bound). The EOS token of a
``stop`` row is scored like any other token. Replies are checked as above: one result
per row, exactly one finite log-prob ``<= LOGPROB_TOLERANCE`` per real response token.

**Serving the teacher with vLLM.** For exact tokens: ``warmstart serve --engine vllm
--model Qwen/Qwen2.5-VL-72B-Instruct-AWQ --port 8000 --max-model-len 8192 --
--tensor-parallel-size 2`` and ``teacher_protocol = "tokens"`` in the OPD config. For the
text protocol, e.g. ``vllm serve Qwen/Qwen2.5-VL-72B-Instruct
--tensor-parallel-size 8``. Recent vLLM ignores the prefix cache for requests that ask
for prompt log-probs (it recomputes them); older releases returned wrong values or
failed with prefix caching on, so start those with ``--no-enable-prefix-caching``.
Every row re-sends the problem's image and prompt: the price of a stateless protocol.

**Prompt.** The teacher sees its own chat template applied to
``warmstart.data.prompts.build_messages(problem)`` and the problem's images (PNG, so
lossless): the same conversation as the student's, rendered the teacher's way.

**Response text.** With the student's ``tokenizer`` given, the text is the decoded
response ids *with* special tokens (so an EOS or any special token the student
emitted is sent as itself). Without it, ``rollouts.texts_B`` (decoded with special
tokens skipped) plus ``eos_text`` is used; the alignment check still guards it.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import math
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from warmstart.scoring import TokenScores

if TYPE_CHECKING:
    from warmstart.rollout import Rollouts

DEFAULT_EOS_TEXT = "<|im_end|>"  # Qwen2/2.5(-VL) chat models end an assistant turn with it
# A log-prob above 0 is impossible; float32 log-softmax noise can give a hair above it. Values in
# (0, LOGPROB_TOLERANCE] are accepted as they are, anything larger (or non-finite) is an error.
LOGPROB_TOLERANCE = 1e-4
# HTTPScorer protocols: OpenAI chat text (vLLM's prompt_logprobs) or exact token ids (warmstart.vllm_server).
PROTOCOLS = ("chat", "tokens")


class TeacherError(RuntimeError):
    """A teacher could not score a batch: unreachable, bad reply, or misaligned tokens."""


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores the response tokens of a :class:`~warmstart.rollout.Rollouts`."""

    def score(self, rollouts: Rollouts) -> TokenScores:
        """Teacher log-probs ``logp_BT`` of ``rollouts.response_ids_BT`` (0 on padding).

        ``entropy_BT`` is optional (``None`` for remote teachers, which return only the
        log-prob of the given token).
        """
        ...


class InProcessScorer(Scorer):
    """A teacher model in this process, scored under ``torch.no_grad``.

    Args:
        model: a Qwen2.5-VL model (e.g. ``load_policy(dir).model``), in eval mode.
        chunk_size: positions per chunk of the vocabulary projection (memory bound).
        with_entropy: also return the teacher's full-vocabulary entropy.
    """

    def __init__(self, model: Any, chunk_size: int = 1024, with_entropy: bool = False) -> None:
        self.model = model
        self.chunk_size = chunk_size
        self.with_entropy = with_entropy

    def score(self, rollouts: Rollouts) -> TokenScores:
        # no_grad: the teacher is a fixed target, never trained through.
        from warmstart.prompt_sharing import score_rows

        with torch.no_grad():  # the update's own choice of scorer (prompt sharing): see score_rows
            scores = score_rows(
                self.model, rollouts, with_entropy=self.with_entropy, chunk_size=self.chunk_size, grad=False
            )
        _check_logprobs(scores.logp_BT, rollouts)
        return scores

    def logq(self, rollouts: Rollouts, vocab: int | None = None) -> torch.Tensor:
        """The teacher's full next-token distribution at every response position: ``B x T x V`` log-probs.

        For OPD's dense estimators (:data:`warmstart.losses.DENSE_OPD_ESTIMATORS`), from the
        forward the student's update runs (:func:`warmstart.prompt_sharing.response_logq`),
        so an identical teacher gives identical numbers. ``vocab``: compare on the student's
        vocabulary (the first ``vocab`` entries, renormalised). Memory: ``N x V`` float32
        (N = real response tokens of ``rollouts``); the OPD stage asks one micro-batch at a time.
        """
        from warmstart.prompt_sharing import response_logq

        with torch.no_grad():
            logq_BTV = response_logq(self.model, rollouts, grad=False, vocab=vocab)
        mask_BT = rollouts.response_mask_BT.to(logq_BTV.device)
        if not bool(torch.isfinite(logq_BTV[mask_BT]).all()):
            b, t = (int(i) for i in (mask_BT & ~torch.isfinite(logq_BTV).all(-1)).nonzero()[0])
            raise TeacherError(
                f"in-process teacher gave a non-finite log-prob at {_row_name(rollouts, b)}, response "
                f"position {t} (a teacher with non-finite weights?)"
            )
        return logq_BTV


def _row_name(rollouts: Rollouts, b: int) -> str:
    """``row <b> (problem <id>)``: the batch row and the problem it samples."""
    q = int(rollouts.prompt_index_B[b])
    return f"row {b} (problem {rollouts.prompts.problems[q].id!r})"


def _check_logprobs(logp_BT: torch.Tensor, rollouts: Rollouts) -> None:
    """In-process teacher output: finite and <= LOGPROB_TOLERANCE on every real response token."""
    mask_BT = rollouts.response_mask_BT.to(logp_BT.device)
    bad_BT = mask_BT & ~(torch.isfinite(logp_BT) & (logp_BT <= LOGPROB_TOLERANCE))
    if bool(bad_BT.any()):  # one sync per batch; the rows are found only on failure
        b, t = (int(i) for i in bad_BT.nonzero()[0])
        raise TeacherError(
            f"in-process teacher gave an impossible log-prob {float(logp_BT[b, t])} at "
            f"{_row_name(rollouts, b)}, response position {t}: log-probs must be finite and <= 0 "
            "(a teacher with non-finite weights?)"
        )


# ---------------------------------------------------------------------------------------------
# HTTP


def image_data_url(image: Any) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL (PNG: lossless, so pixels survive)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def openai_messages(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """transformers-style chat messages -> OpenAI chat messages.

    ``{"type": "image"}`` placeholders are replaced, in order, by ``image_url`` parts
    holding ``images`` as data URLs. Content that is a single text part becomes a plain
    string (every OpenAI-compatible server accepts that for every role).
    """
    out = []
    next_image = 0
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    if next_image >= len(images):
                        raise ValueError(f"messages have more image placeholders than images ({len(images)})")
                    parts.append(
                        {"type": "image_url", "image_url": {"url": image_data_url(images[next_image])}}
                    )
                    next_image += 1
                else:
                    parts.append(part)
            if len(parts) == 1 and parts[0].get("type") == "text":
                content = parts[0]["text"]
            else:
                content = parts
        out.append({"role": m["role"], "content": content})
    if next_image != len(images):
        raise ValueError(f"{len(images)} images but {next_image} image placeholders in the messages")
    return out


class _HTTPStatusError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


def _error_message(body: str) -> str:
    """The human part of an OpenAI/vLLM error body (``{"error": {"message"}}`` or ``{"message"}``)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if isinstance(err, str):
            return err
    return body[:500]


class HTTPScorer(Scorer):
    """A teacher behind an OpenAI-compatible server that returns ``prompt_logprobs`` (vLLM).

    See the module docstring for the protocol, the EOS handling and the alignment check.

    Args:
        base_url: server root, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is accepted).
        model_name: the served model name; ``None`` asks ``/v1/models`` once and takes the first.
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt on connection errors, timeouts and 5xx
            (never on 4xx: a bad request stays bad).
        backoff_s: first retry delay; doubles on each retry.
        batch_size: requests in flight at once (one thread each).
        api_key: sent as ``Authorization: Bearer``.
        tokenizer: the *student's* tokenizer. Recommended: the response text is then the
            exact decoding of the sampled ids (special tokens included), and a mismatch
            error can tell a tokenizer difference from a non-canonical sample.
        eos_text: EOS/terminator text used when ``tokenizer`` is ``None`` (or has no EOS).
        protocol: ``chat`` (OpenAI chat completions with ``prompt_logprobs``: real ``vllm
            serve`` or ``warmstart serve``; text, re-tokenised by the server, alignment
            checked) or ``tokens`` (the exact student token ids and images to
            :mod:`warmstart.vllm_server`'s ``/score``; ``batch_size`` rows per request).
    """

    def __init__(
        self,
        base_url: str,
        model_name: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        batch_size: int = 8,
        api_key: str | None = None,
        tokenizer: Any = None,
        eos_text: str | None = None,
        protocol: str = "chat",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        url = base_url.rstrip("/")
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.batch_size = batch_size
        self.api_key = api_key
        self.tokenizer = tokenizer
        self.eos_text = eos_text or getattr(tokenizer, "eos_token", None) or DEFAULT_EOS_TEXT
        self.protocol = protocol
        self._model_lock = threading.Lock()

    # -- transport ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        """One HTTP exchange with bounded retries; returns (status, text) of a 2xx reply.

        Connection errors, timeouts and 5xx are retried (the server may be starting or
        overloaded); 4xx raises at once with the server's message.
        """
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return resp.status, resp.read().decode("utf-8", errors="replace")
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", errors="replace")
                if 400 <= e.code < 500:
                    raise TeacherError(
                        f"teacher at {url} rejected the request (HTTP {e.code}): {_error_message(text)}"
                    ) from None
                last = _HTTPStatusError(e.code, text)
            except (OSError, http.client.HTTPException) as e:
                # OSError: URLError (refused, unresolvable), timeouts, resets; HTTPException: a reply
                # cut short (IncompleteRead, BadStatusLine), e.g. a server restarting mid-request.
                last = e
        attempts = self.max_retries + 1
        if isinstance(last, _HTTPStatusError):
            raise TeacherError(
                f"teacher at {url} failed with HTTP {last.status} after {attempts} attempts: "
                f"{_error_message(last.body)}"
            )
        reason = getattr(last, "reason", last)
        raise TeacherError(f"cannot reach teacher at {url}: {reason} (after {attempts} attempts)")

    def _json(self, method: str, path: str, body: dict | None = None) -> Any:
        _, text = self._request(method, path, body)
        try:
            return json.loads(text)
        except ValueError as e:
            raise TeacherError(
                f"malformed response from {self.base_url + path}: body is not JSON ({e}): {text[:200]!r}"
            ) from None

    def health(self) -> None:
        """``GET /health``; raises :class:`TeacherError` unless the server answers 2xx."""
        self._request("GET", "/health")

    def resolved_model_name(self) -> str:
        """``model_name``, or the first model ``/v1/models`` lists (asked once)."""
        with self._model_lock:
            if self.model_name is None:
                data = self._json("GET", "/v1/models")
                try:
                    self.model_name = str(data["data"][0]["id"])
                except (KeyError, IndexError, TypeError):
                    raise TeacherError(
                        f"malformed response from {self.base_url}/v1/models: no data[0].id in {str(data)[:200]}"
                    ) from None
            return self.model_name

    # -- one row --------------------------------------------------------------------------------

    def _response_content(self, rollouts: Rollouts, b: int, ids: list[int]) -> tuple[str, bool]:
        """(assistant content, whether the last position is the student's own EOS)."""
        stop = rollouts.finish_reason_B[b] == "stop"
        tok = self.tokenizer
        if tok is not None:
            # Exact text of what was sampled: special tokens kept, no space clean-up.
            text = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if stop:
                return text, True  # ends with the EOS token's own text
            return text + self.eos_text, False
        return rollouts.texts_B[b] + self.eos_text, stop

    def _score_row(self, rollouts: Rollouts, b: int, messages: list[dict], model: str) -> list[float]:
        n = int(rollouts.response_mask_BT[b].sum())
        ids = rollouts.response_ids_BT[b, :n].tolist()
        content, eos_last = self._response_content(rollouts, b, ids)
        body = {
            "model": model,
            "messages": messages + [{"role": "assistant", "content": content}],
            "continue_final_message": True,
            "add_generation_prompt": False,
            "max_tokens": 1,
            "prompt_logprobs": 0,
        }
        url = self.base_url + "/v1/chat/completions"
        data = self._json("POST", "/v1/chat/completions", body)
        row = _row_name(rollouts, b)
        plp = data.get("prompt_logprobs") if isinstance(data, dict) else None
        if not isinstance(plp, list):
            raise TeacherError(
                f"malformed response from {url}: no prompt_logprobs list ({row}); "
                "is the server vLLM (or `warmstart serve`) with prompt_logprobs support?"
            )
        # The reply must cover the whole prompt: as many positions as the server says it has.
        usage = data.get("usage")
        said = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if isinstance(said, int) and not isinstance(said, bool) and said != len(plp):
            raise TeacherError(
                f"malformed response from {url}: reply too {'short' if len(plp) < said else 'long'} for "
                f"{row}: prompt_logprobs has {len(plp)} positions but usage.prompt_tokens is {said}"
            )
        # Scored span: the last n positions, or the n before the terminator.
        end = len(plp) if eos_last else len(plp) - 1
        start = end - n
        if start < 1:  # position 0 has no log-prob, so at least one prompt token must precede
            raise TeacherError(
                f"malformed response from {url}: reply too short for {row}: prompt_logprobs has "
                f"{len(plp)} positions, too few for {n} response tokens"
            )
        server_ids = data.get("prompt_token_ids")
        if server_ids is not None and not (isinstance(server_ids, list) and len(server_ids) == len(plp)):
            raise TeacherError(
                f"malformed response from {url}: prompt_token_ids is not a list as long as "
                f"prompt_logprobs ({len(plp)}) ({row})"
            )
        teacher_ids: list[int] = []
        logps: list[float] = []
        for pos in range(start, end):
            teacher_id, lp = self._entry(plp, pos, server_ids, url, row)
            teacher_ids.append(teacher_id)
            logps.append(lp)
        # The reply's own faults first (impossible values), then the cross-check with the student.
        for t, lp in enumerate(logps):
            if not (math.isfinite(lp) and lp <= LOGPROB_TOLERANCE):
                raise TeacherError(
                    f"teacher at {url} returned an impossible log-prob {lp} for {row} at response "
                    f"position {t} (prompt_logprobs[{start + t}]): log-probs must be finite and <= 0"
                )
        for t, teacher_id in enumerate(teacher_ids):
            if teacher_id != ids[t]:
                self._raise_shifted(plp, server_ids, ids, eos_last, url, row)
                self._raise_mismatch(rollouts, b, t, ids, teacher_id, content, eos_last, url)
        return logps

    @staticmethod
    def _entry(plp: list, pos: int, server_ids: list | None, url: str, row: str) -> tuple[int, float]:
        """(token id, log-prob) of the prompt token at ``pos`` of a ``prompt_logprobs`` list."""
        entry = plp[pos]
        if not isinstance(entry, dict) or not entry:
            raise TeacherError(
                f"malformed response from {url}: prompt_logprobs[{pos}] is {entry!r}, expected a dict ({row})"
            )
        # With prompt_logprobs=0 the dict holds just the actual prompt token; where the server
        # also sends prompt_token_ids (vLLM with return_token_ids), that names it for sure.
        if server_ids is not None:
            key = str(server_ids[pos])
        elif len(entry) == 1:
            key = next(iter(entry))
        else:
            raise TeacherError(
                f"malformed response from {url}: prompt_logprobs[{pos}] has {len(entry)} tokens and "
                f"no prompt_token_ids say which was the prompt's ({row})"
            )
        try:
            return int(key), float(entry[key]["logprob"])
        except (KeyError, TypeError, ValueError):
            raise TeacherError(
                f"malformed response from {url}: prompt_logprobs[{pos}] = {str(entry)[:200]} has no "
                f"logprob for token {key!r} ({row})"
            ) from None

    @staticmethod
    def _raise_shifted(
        plp: list, server_ids: list | None, ids: list[int], eos_last: bool, url: str, row: str
    ) -> None:
        """Raise "reply too short/long" when the reply holds the student's ids rigidly shifted.

        A reply cut short by ``d`` positions (or padded by ``-d``) has the response tokens ``d``
        positions later than the span read from its end. The smallest such shift wins; it must
        cover at least ``min(n, 3)`` positions, all equal, so a real tokenizer difference is
        not mistaken for one.
        """

        def tid(pos: int) -> int | None:
            if server_ids is not None:
                try:
                    return int(server_ids[pos])
                except (TypeError, ValueError):
                    return None
            entry = plp[pos]
            if isinstance(entry, dict) and len(entry) == 1:
                try:
                    return int(next(iter(entry)))
                except ValueError:
                    return None
            return None

        n, L = len(ids), len(plp)
        off = 0 if eos_last else 1  # the terminator's position after a length row's response
        for d in sorted(range(-(L - 1), n), key=lambda x: (abs(x), x)):
            if d == 0:
                continue
            s = L + d - off - n  # where the response would start in the reply
            positions = range(max(1, s), min(L, s + n))
            if len(positions) < min(n, 3):
                continue
            if all(tid(p) == ids[p - s] for p in positions):
                how = f"too short: {d} positions missing" if d > 0 else f"too long: {-d} extra positions"
                raise TeacherError(
                    f"malformed response from {url}: reply {how} at the end for {row} (its "
                    f"{len(plp)} prompt_logprobs hold the student's response tokens {abs(d)} "
                    f"positions {'later' if d > 0 else 'earlier'} than a complete reply would); a "
                    "truncated or padded reply (a proxy or server fault), not a token mismatch"
                )

    def _raise_mismatch(
        self,
        rollouts: Rollouts,
        b: int,
        t: int,
        ids: list[int],
        teacher_id: int,
        content: str,
        eos_last: bool,
        url: str,
    ) -> None:
        q = int(rollouts.prompt_index_B[b])
        problem = rollouts.prompts.problems[q]
        msg = (
            f"teacher at {url}: teacher tokens differ from the student's in row {b} (problem {problem.id!r}) at response "
            f"position {t}: student id {ids[t]}, teacher id {teacher_id}"
        )
        tok = self.tokenizer
        if tok is None:
            msg += (
                ". Either the teacher's tokenizer differs from the student's (OPD needs a shared one) or the "
                "sampled tokens are not the canonical tokenization of their text; pass tokenizer= to tell which"
            )
            raise TeacherError(msg)
        msg += f" (student token {tok.convert_ids_to_tokens(ids[t])!r})"
        # Re-encode the student's own prompt text + the content sent with the student's tokenizer
        # (in context, so merges across the prompt/response boundary count): if that does not
        # give back the sampled ids either, the sample is not the canonical tokenization of its
        # text, which no text protocol can carry; otherwise the two tokenizers differ.
        prompt_texts = getattr(rollouts.prompts, "texts_Q", None)
        prefix = prompt_texts[q] if prompt_texts else ""
        full = tok(prefix + content, add_special_tokens=False)["input_ids"]
        tail = full[len(full) - len(ids) :] if eos_last else full[len(full) - len(ids) - 1 : -1]
        if tail != ids:
            msg += (
                ". The student's own tokenizer re-encodes this response differently: the sampled "
                "tokens are not the canonical tokenization of their text (or not valid UTF-8 alone), "
                "so a text-based teacher cannot score them"
            )
        else:
            msg += ". The teacher's tokenizer differs from the student's; OPD needs a shared tokenizer"
        raise TeacherError(msg)

    # -- batch ----------------------------------------------------------------------------------

    def score(self, rollouts: Rollouts) -> TokenScores:
        """Teacher log-probs of every real response token; entropy is ``None``.

        Requests go out ``batch_size`` at a time (threads); the first failure cancels the
        rest and is raised.
        """
        from warmstart.data.prompts import build_messages

        B, T = rollouts.response_ids_BT.shape
        logp_BT = torch.zeros(B, T, dtype=torch.float32)
        lengths = rollouts.response_mask_BT.sum(dim=1).tolist()
        rows = [b for b in range(B) if lengths[b] > 0]
        if not rows:
            return TokenScores(logp_BT=logp_BT, entropy_BT=None)
        if self.protocol == "tokens":
            return self._score_tokens(rollouts, rows, lengths, logp_BT)
        model = self.resolved_model_name()
        # Encode each prompt's images once, however many samples share it.
        messages_by_q: dict[int, list[dict]] = {}
        for b in rows:
            q = int(rollouts.prompt_index_B[b])
            if q not in messages_by_q:
                problem = rollouts.prompts.problems[q]
                messages_by_q[q] = openai_messages(build_messages(problem), problem.load_images())
        with ThreadPoolExecutor(max_workers=min(self.batch_size, len(rows))) as pool:
            futures = {
                b: pool.submit(
                    self._score_row, rollouts, b, messages_by_q[int(rollouts.prompt_index_B[b])], model
                )
                for b in rows
            }
            try:
                for b in rows:
                    logp_BT[b, : lengths[b]] = torch.tensor(futures[b].result(), dtype=torch.float32)
            except BaseException:
                for f in futures.values():
                    f.cancel()
                raise
        return TokenScores(logp_BT=logp_BT, entropy_BT=None)

    # -- the exact-token protocol ---------------------------------------------------------------

    def _score_tokens(
        self, rollouts: Rollouts, rows: list[int], lengths: list[int], logp_BT: torch.Tensor
    ) -> TokenScores:
        """``protocol="tokens"``: the student's exact ids + images to ``/score``, ``batch_size`` rows a request."""
        from warmstart.vllm_engine import image_b64, prompt_token_ids

        prompts: dict[int, tuple[list[int], list[str]]] = {}  # each prompt's ids and images, encoded once
        for b in rows:
            q = int(rollouts.prompt_index_B[b])
            if q not in prompts:
                images = rollouts.prompts.problems[q].load_images()
                prompts[q] = (prompt_token_ids(rollouts.prompts, q), [image_b64(im) for im in images])
        suppress = [int(i) for i in rollouts.suppressed_ids]
        url = self.base_url + "/score"
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s : s + self.batch_size]
            items = []
            for b in chunk:
                ids, images = prompts[int(rollouts.prompt_index_B[b])]
                response = rollouts.response_ids_BT[b, : lengths[b]].tolist()
                items.append({"token_ids": ids + response, "images": images, "score_from": len(ids)})
            data = self._json("POST", "/score", {"prompts": items, "suppress_token_ids": suppress})
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list) or len(results) != len(chunk):
                got = len(results) if isinstance(results, list) else "no"
                raise TeacherError(
                    f"malformed response from {url}: {got} results for {len(chunk)} rows "
                    f"(from {_row_name(rollouts, chunk[0])}); is the server warmstart.vllm_server?"
                )
            for b, result in zip(chunk, results):
                logp_BT[b, : lengths[b]] = torch.tensor(
                    self._token_logprobs(result, lengths[b], url, _row_name(rollouts, b)), dtype=torch.float32
                )
        return TokenScores(logp_BT=logp_BT, entropy_BT=None)

    @staticmethod
    def _token_logprobs(result: Any, n: int, url: str, row: str) -> list[float]:
        """The ``n`` response log-probs of one ``/score`` result, checked."""
        lps = result.get("logprobs") if isinstance(result, dict) else None
        if not isinstance(lps, list):
            raise TeacherError(
                f"malformed response from {url}: no logprobs list for {row}: {str(result)[:200]}"
            )
        if len(lps) != n:
            raise TeacherError(
                f"malformed response from {url}: reply too {'short' if len(lps) < n else 'long'} for {row}: "
                f"{len(lps)} log-probs for {n} response tokens"
            )
        out = []
        for t, lp in enumerate(lps):
            ok = isinstance(lp, int | float) and not isinstance(lp, bool)
            if not (ok and math.isfinite(lp) and lp <= LOGPROB_TOLERANCE):
                raise TeacherError(
                    f"teacher at {url} returned an impossible log-prob {lp!r} for {row} at response position "
                    f"{t}: log-probs must be finite and <= 0"
                )
            out.append(float(lp))
        return out


def http_generate(
    scorer: HTTPScorer, problems: list[Any], n: int, temperature: float, max_tokens: int, seed: int = 0
) -> list[list[str]]:
    """``n`` sampled responses per problem from an OpenAI-compatible server (plain chat completions).

    Used for teacher-generated SFT rationales when the teacher is served (vLLM): the
    same messages as the scoring requests, ``n`` choices per request.
    """
    from warmstart.data.prompts import build_messages

    if scorer.protocol != "chat":
        raise TeacherError(
            f"teacher at {scorer.base_url}: sampling rationales needs an OpenAI-compatible chat server "
            f"(protocol 'chat', e.g. `vllm serve`), not protocol {scorer.protocol!r}"
        )
    model = scorer.resolved_model_name()

    def one(i: int) -> list[str]:
        p = problems[i]
        body = {
            "model": model,
            "messages": openai_messages(build_messages(p), p.load_images()),
            "n": n,
            "temperature": temperature,
            "top_p": 1.0,
            "max_tokens": max_tokens,
            "seed": seed + i,
        }
        data = scorer._json("POST", "/v1/chat/completions", body)
        try:
            return [str(c["message"]["content"]) for c in data["choices"]]
        except (KeyError, TypeError):
            raise TeacherError(
                f"malformed response from {scorer.base_url}: no choices[].message.content "
                f"for problem {p.id!r}: {str(data)[:200]}"
            ) from None

    with ThreadPoolExecutor(max_workers=max(1, min(scorer.batch_size, len(problems)))) as pool:
        return list(pool.map(one, range(len(problems))))
