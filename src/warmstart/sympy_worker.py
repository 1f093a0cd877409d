"""The sympy worker: one persistent child process that runs math-verify under a hard time limit.

Why a process and not a thread or ``signal.alarm`` is explained in the
:mod:`warmstart.grading` docstring. :data:`_WORKER` is the one shared instance.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time

# The logger of grading.py: every grading message under one name, so one filter catches them.
logger = logging.getLogger("warmstart.grading")

#: How long the worker may take to start (importing sympy on a loaded 2-core machine).
WORKER_START_TIMEOUT_S: float = 60.0


class _Unavailable(Exception):
    """The worker could not answer (timeout, crash, not startable): not to be cached."""


class _SymbolicWorker:
    """One long-lived child process that runs math-verify/sympy under a hard time limit.

    Requests are serialised by a lock (sympy holds the GIL anyway), so any number of
    threads may grade at once. A call that overruns its limit kills the child; the next
    call starts a fresh one. After a fork the child process gets its own worker
    (``os.register_at_fork``), never sharing the parent's pipes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._next_id = 0
        self._retry_start_after = 0.0

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._proc = None  # the parent's child: not ours to talk to or kill
        self._buf = b""

    def call(self, request: dict, timeout_s: float) -> object:
        """The worker's answer to ``request``; raises :class:`_Unavailable` on timeout or failure."""
        if not self._lock.acquire(timeout=WORKER_START_TIMEOUT_S + timeout_s):
            raise _Unavailable("sympy worker busy")
        try:
            proc = self._ensure_started()
            if proc is None:
                raise _Unavailable("sympy worker not running")
            self._next_id += 1
            msg = dict(request, id=self._next_id)
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(msg) + "\n").encode())
            proc.stdin.flush()
            line = self._read_line(time.monotonic() + timeout_s)
            if line is None:
                logger.debug("sympy worker overran %.1fs on %s; restarting it", timeout_s, request.get("op"))
                self._kill()
                raise _Unavailable("sympy worker timed out")
            reply = json.loads(line)
            if reply.get("id") != self._next_id:
                self._kill()
                raise _Unavailable("sympy worker out of step")
            return reply.get("result")
        except _Unavailable:
            raise
        except Exception as e:
            logger.debug("sympy worker call failed", exc_info=True)
            self._kill()
            raise _Unavailable(str(e)) from e
        finally:
            self._lock.release()

    def _ensure_started(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._kill()
        if time.monotonic() < self._retry_start_after:
            return None
        src_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH", "")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", "from warmstart.sympy_worker import _worker_main; _worker_main()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                bufsize=0,
            )
            ready = self._read_line(time.monotonic() + WORKER_START_TIMEOUT_S)
            if ready is None or not json.loads(ready).get("ready"):
                raise RuntimeError("worker did not report ready")
        except Exception as e:
            logger.warning(
                "grading: sympy worker failed to start (%s); symbolic answers graded wrong for 30 s", e
            )
            self._kill()
            self._retry_start_after = time.monotonic() + 30.0
            return None
        return self._proc

    def _read_line(self, deadline: float) -> bytes | None:
        """One reply line, or ``None`` at the deadline or when the worker died."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def _kill(self) -> None:
        proc, self._proc, self._buf = self._proc, None, b""
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=5)
        except Exception:
            logger.debug("could not reap sympy worker", exc_info=True)
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except Exception:
                pass

    def close(self) -> None:
        """Stop the worker (at interpreter exit; also usable by tests)."""
        with self._lock:
            self._kill()


_WORKER = _SymbolicWorker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER._reset_after_fork)


def _worker_value(expr: str, parse) -> list | None:
    """["rat", p, q] or ["float", x] for a real number, ``None`` otherwise."""
    import sympy

    for item in parse("$" + expr + "$", parsing_timeout=None):
        if not isinstance(item, sympy.Basic):
            continue
        if getattr(item, "free_symbols", True):
            return None
        item = item.doit()  # math-verify leaves e.g. sqrt(16) unevaluated; 4 must stay exact
        if isinstance(item, sympy.Rational):
            return ["rat", str(item.p), str(item.q)]
        z = complex(item.evalf(30))
        if abs(z.imag) > 1e-12 * max(1.0, abs(z.real)) or not math.isfinite(z.real):
            return None
        return ["float", z.real]
    return None


def _worker_main() -> None:
    """Entry point of the worker process: JSON requests on stdin, JSON replies on stdout.

    Stray prints from sympy go to stderr (the protocol owns the real stdout), and
    math-verify's "timeout disabled" warnings are silenced: the parent owns the limit.
    """
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.disable(logging.CRITICAL)
    from math_verify import parse, verify

    proto.write('{"ready": true}\n')
    proto.flush()
    while True:
        line = sys.stdin.readline()
        if not line:  # parent gone
            return
        req = json.loads(line)
        result: object = None
        try:
            op = req.get("op")
            if op == "value":
                result = _worker_value(req["expr"], parse)
            elif op == "equiv":
                gold = parse("$" + req["gold"] + "$", parsing_timeout=None)
                pred = parse("$" + req["pred"] + "$", parsing_timeout=None)
                result = bool(gold and pred and verify(gold, pred, timeout_seconds=None))
        except Exception:
            result = None
        proto.write(json.dumps({"id": req.get("id"), "result": result}) + "\n")
        proto.flush()
