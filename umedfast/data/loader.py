"""Input pipeline: image decode and preprocessing in ``torch.utils.data`` workers, off the training loop.

One :class:`Feed` serves SFT micro-batches, PPO query batches and evaluation batches::

    feed = train_feed(cfg, d, bundle, train, order, micro, count)   # SFT / PPO: order = EpochOrder (main process)
    epoch, idx = order.next_batch(micro)                              # the loop still advances the order itself
    fed = feed.next(shard(idx, d))                                    # the batch of exactly those records, on device

**Order.** The batch sampler (:class:`OrderShards`) walks a *copy* of the run's ``EpochOrder`` from its current
state; workers only decode and preprocess the indices they are handed. The sequence of batches is therefore a
function of (seed, data, batch size) alone, whatever ``data.workers`` is, and ``feed.next`` checks every batch
against the indices the loop asks for (a mismatch is a bug and raises). The order the checkpoint stores is the
loop's own ``EpochOrder``, which only advances as batches are *consumed* (not as workers prefetch ahead), so a
resume after ``kill -9`` rebuilds the feed at the exact next sample. Under torchrun each rank's sampler yields its
shard ``idx[rank::world]`` of the same global batch, as before.

**Corrupt images.** A record whose image cannot be decoded (truncated PNG, wrong bytes, unsupported mode) does not
crash a worker: the worker hands back a :class:`BadImage` marker and the batch proceeds with the remaining
records (the micro-batch is one sample smaller; SFT's loss is normalized by the tokens actually present). The
main process counts it (``bad_images`` in metrics.jsonl, the summary and eval.json) and names its path once in the
log. A batch in which *every* image is unreadable cannot proceed and is a ``UserError`` naming them. In
evaluation a record with an unreadable image gets an empty response (scored wrong), so ``n`` does not change.

**Workers.** ``data.workers``: ``auto`` (:func:`resolve_workers`), ``0`` = in-process (no worker, the
pre-pipeline behaviour) or N processes. Workers are forked (cheapest start: no re-import, nothing pickled; they
never touch CUDA or the model), persistent, 1 torch thread each, ignore SIGINT (Ctrl-C is the main process's
business: it stops at a step boundary), and exit when the main process dies (``kill -9``). ``pin_memory`` on CUDA.

**Evaluation cache.** The held-out set is evaluated repeatedly with the same batches (every SFT epoch, then after
PPO in ``--stage all``); the first pass keeps each collated CPU batch (up to ``EVAL_CACHE_MB``) keyed by a
fingerprint of the processor and each record's id, image file (path, mtime, size), query and meta; later passes
reuse them: each held-out image is decoded and preprocessed once per process.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Sequence

import torch

from umedfast.config import workers_value
from umedfast.errors import UserError
from umedfast.model.collate import collate_chat, record_image, to_model

log = logging.getLogger("umedfast.data.loader")

EVAL_CACHE_MB = 2048  # collated evaluation batches kept per process (CPU RAM); beyond it batches are recomputed
AUTO_MAX_WORKERS = 4  # ``data.workers: auto`` never starts more than this per process


@dataclass(frozen=True)
class BadImage:
    """A record whose image could not be read: ``index`` in the feed's records, its ``path`` and the ``error``."""

    index: int
    path: str
    error: str


@dataclass
class Fed:
    """One batch out of a :class:`Feed`: ``batch`` (model inputs of ``collate_chat``, on the model's device; None
    when no record was usable), ``indices`` of the records it holds (in order), ``bad`` the records left out."""

    batch: dict | None
    indices: list[int]
    bad: list[BadImage] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- workers
def resolve_workers(value: int | str, *, device: str = "cpu", torch_threads: int | None = None,
                    local_world: int = 1) -> int:
    """The number of worker processes for ``data.workers`` (``auto`` or an integer >= 0).

    ``auto``: the CPUs this process may use (``os.sched_getaffinity``), shared among the ``local_world`` ranks of
    the machine, minus what the main process needs: on CUDA one core (the Python loop), on CPU the torch
    intra-op threads (a worker that takes a core an OpenMP thread waits on stalls every parallel region).
    At most ``AUTO_MAX_WORKERS``. On the 2-core demo box with ``threads: auto``/1 thread that is 1 worker; with
    2 torch threads it is 0 (in-process)."""
    v = workers_value(value)
    if v != "auto":
        return v
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // max(1, local_world))
    main = 1 if device.startswith("cuda") else (torch_threads or torch.get_num_threads())
    return max(0, min(AUTO_MAX_WORKERS, share - main))


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal Ctrl-C reaches the whole process group


def _read_image(rec) -> Any:
    return record_image(rec)


class _Images(torch.utils.data.Dataset):
    """Map-style dataset over records: item ``i`` = ``(i, PIL RGB image)`` or a :class:`BadImage`."""

    def __init__(self, records: Sequence[Any], prepare: Callable | None = None):
        self.records = records
        self.prepare = prepare  # record -> something ``record_image`` reads (evaluation: benchmark samples)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        rec = self.records[i]
        try:
            return i, _read_image(self.prepare(rec) if self.prepare else rec)
        except Exception as e:  # noqa: BLE001 - any decode failure is counted and reported, never a worker crash
            img = rec.get("image") if isinstance(rec, dict) else getattr(rec, "image", None)
            return BadImage(i, str(img), f"{type(e).__name__}: {e}")


def _field(rec, name: str):
    return rec.get(name) if isinstance(rec, dict) else getattr(rec, name, None)


class _Collate:
    """Worker-side ``collate_fn``: the usable images through ``collate_chat(move=False)`` (processor + template)."""

    def __init__(self, spec, records: Sequence[Any], for_generation: bool):
        self.spec, self.records, self.for_generation = spec, records, for_generation

    def __call__(self, items: list) -> dict:
        good = [it for it in items if not isinstance(it, BadImage)]
        bad = [it for it in items if isinstance(it, BadImage)]
        batch = None
        if good:
            recs = [{"image": img, "query": _field(self.records[i], "query"),
                     "response": _field(self.records[i], "response")} for i, img in good]
            batch = collate_chat(self.spec, recs, for_generation=self.for_generation, move=False)
        return {"indices": [i for i, _ in good], "bad": bad, "batch": batch}


def collate_spec(bundle) -> SimpleNamespace:
    """What ``collate_chat(move=False)`` reads from a bundle, without the model (workers never hold it)."""
    return SimpleNamespace(processor=bundle.processor, tokenizer=bundle.tokenizer,
                           image_token_id=bundle.image_token_id)


# --------------------------------------------------------------------------------------------------- samplers
class OrderShards:
    """Batch sampler: the next ``count`` global batches of ``size`` from ``order`` (an ``EpochOrder``), this rank's
    shard ``idx[rank::world]`` of each. Walks a copy: the caller's ``order`` advances only as it consumes."""

    def __init__(self, order, size: int, count: int, rank: int = 0, world: int = 1):
        # the order's own class rebuilt from its state: the data layer does not import train/ (data_order)
        self.order_type, self.state = type(order), order.state_dict()
        self.size, self.count, self.rank, self.world = size, max(0, int(count)), rank, world

    def __iter__(self):
        s = self.state
        o = self.order_type(s["n"], seed=s["seed"], epoch=s["epoch"], pos=s["pos"])
        for _ in range(self.count):
            _, idx = o.next_batch(self.size)
            yield idx[self.rank::self.world]

    def __len__(self) -> int:
        return self.count


# --------------------------------------------------------------------------------------------------- the feed
class Feed:
    """Batches of ``records`` in the order of ``batches`` (an iterable of index lists), prepared by ``workers``
    processes (0 = in this process) with ``prefetch_factor`` batches in flight per worker.

    ``next(expect)`` returns the next :class:`Fed` (moved to ``model``'s device when ``model`` is given) after
    checking that it holds the records ``expect``; ``wait_s`` accumulates the seconds the caller blocked in it,
    ``bad_images`` the unreadable images met so far. ``close()`` stops the workers (also on garbage collection)."""

    def __init__(self, records: Sequence[Any], batches: Iterable[list[int]], spec, *, for_generation: bool = False,
                 workers: int = 0, model=None, pin_memory: bool = False, prefetch_factor: int = 2,
                 mp_context: str = "fork", prepare: Callable | None = None, what: str = "data"):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if workers and os.environ.get("TOKENIZERS_PARALLELISM") is None:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the Rust tokenizer's thread pool must not cross fork
        self.records, self.model, self.what, self.workers = records, model, what, workers
        self.pin = bool(pin_memory and workers)
        kw = {}
        if workers:
            kw = dict(prefetch_factor=prefetch_factor, persistent_workers=True, worker_init_fn=_worker_init,
                      multiprocessing_context=mp_context)
        self.loader = torch.utils.data.DataLoader(_Images(records, prepare), batch_sampler=batches,
                                                  collate_fn=_Collate(spec, records, for_generation),
                                                  num_workers=workers, pin_memory=self.pin, **kw)
        self._it = None
        self.wait_s = 0.0
        self.bad_images = 0
        self._named: set[str] = set()

    def next(self, expect: Sequence[int] | None = None) -> Fed:
        t0 = time.perf_counter()
        if self._it is None:
            self._it = iter(self.loader)
        try:
            item = next(self._it)
        except StopIteration:
            raise RuntimeError(f"the {self.what} feed is exhausted (asked for more batches than it was built "
                               "for)") from None
        got = sorted(item["indices"] + [b.index for b in item["bad"]])
        if expect is not None and got != sorted(expect):
            raise RuntimeError(f"the {self.what} feed is out of step with the data order: expected records "
                               f"{list(expect)[:8]}..., got {got[:8]}...")
        batch = item["batch"]
        if batch is not None and self.model is not None:
                    batch = to_model(batch, self.model, non_blocking=self.pin)
        self.wait_s += time.perf_counter() - t0
        for b in item["bad"]:
            self.bad_images += 1
            if b.path not in self._named:
                self._named.add(b.path)
                log.warning("%s: unreadable image skipped (counted in bad_images): %s (%s)", self.what, b.path,
                            b.error)
        return Fed(batch, list(item["indices"]), list(item["bad"]))

    def next_usable(self, expect: Sequence[int]) -> Fed:
        """``next`` for training: a batch with no usable image at all cannot proceed (``UserError``)."""
        fed = self.next(expect)
        if fed.batch is None:
            raise UserError(f"every image of a {self.what} batch is unreadable: "
                            + "; ".join(f"{b.path} ({b.error})" for b in fed.bad[:4]))
        return fed

    def pop_wait(self) -> float:
        """Seconds blocked since the last call (per-step ``data_wait_s``)."""
        w, self.wait_s = self.wait_s, 0.0
        return w

    def close(self) -> None:
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def train_feed(cfg, d, bundle, records: Sequence[Any], order, size: int, count: int, *,
               for_generation: bool = False, what: str = "train") -> Feed:
    """The feed of a training loop: ``count`` global batches of ``size`` from ``order``'s current state, this
    rank's shard of each, ``data.workers`` processes (resolved against the device and torch threads)."""
    device = str(next(bundle.model.parameters()).device)
    workers = resolve_workers(cfg.data.workers, device=device,
                              local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    log.info("%s input pipeline: %d worker process(es) (data.workers=%s)", what, workers, cfg.data.workers)
    return Feed(records, OrderShards(order, size, count, d.rank, d.world), collate_spec(bundle),
                for_generation=for_generation, workers=workers, model=bundle.model,
                pin_memory=device.startswith("cuda"), what=what)


# --------------------------------------------------------------------------------------------------- evaluation
_EVAL_CACHE: dict[tuple, dict] = {}
_EVAL_CACHE_BYTES = [0]


def _nbytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))


def _fingerprint(bundle) -> str:
    """What makes two processors collate alike: image processor settings, tokenizer, chat template, image token."""
    proc, tok = bundle.processor, bundle.tokenizer
    h = hashlib.sha256()
    ip = getattr(proc, "image_processor", None)
    h.update(type(proc).__name__.encode())
    h.update((ip.to_json_string() if hasattr(ip, "to_json_string") else repr(ip)).encode())
    backend = getattr(tok, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else f"{tok.name_or_path}:{len(tok)}").encode())
    h.update(str(getattr(proc, "chat_template", None) or getattr(tok, "chat_template", "")).encode())
    h.update(str(bundle.image_token_id).encode())
    return h.hexdigest()


def _chunk_key(fp: str, recs: Sequence[Any]) -> tuple | None:
    """Cache key of a chunk: processor fingerprint + (id, image path, file mtime and size, query, meta) of each
    record; None (not cached) when an image is not a file path (in-memory benchmark pixels) or cannot be stat'ed."""
    out = []
    for r in recs:
        img = _field(r, "image")
        if not isinstance(img, (str, os.PathLike)):
            return None
        try:
            st = os.stat(img)
        except OSError:
            return None
        out.append((str(_field(r, "id")), str(img), st.st_mtime_ns, st.st_size, str(_field(r, "query")),
                    repr(sorted((_field(r, "meta") or {}).items()))))
    return fp, tuple(out)


def eval_batches(bundle, records: Sequence[Any], batch_size: int, *, workers: int = 0,
                 prepare: Callable | None = None, cache: bool = True):
    """Yield ``(start, Fed)`` for consecutive chunks ``records[start:start + batch_size]`` (generation batches,
    left-padded, on the model's device). Batches seen before in this process (same processor, same image files
    unchanged, same ids, queries and meta) come from the cache; the others from a :class:`Feed` with ``workers``
    processes. ``Fed.indices`` are positions in
    ``records``; ``Fed.bad`` the records of the chunk whose image could not be read (counted by the caller)."""
    n = len(records)
    chunks = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    fp = _fingerprint(bundle) if cache else ""
    keys = [_chunk_key(fp, [records[i] for i in c]) if cache else None for c in chunks]
    todo = [c for c, k in zip(chunks, keys) if k is None or k not in _EVAL_CACHE]
    feed = None
    if todo:
        feed = Feed(records, todo, collate_spec(bundle), for_generation=True, workers=min(workers, len(todo)),
                    prepare=prepare, what="evaluation")
    try:
        for c, k in zip(chunks, keys):
            if k is not None and k in _EVAL_CACHE:
                hit = _EVAL_CACHE[k]
                yield c[0], Fed(to_model(hit["batch"], bundle.model) if hit["batch"] is not None else None,
                                list(hit["indices"]), list(hit["bad"]))
                continue
            fed = feed.next(c)
            cpu = fed.batch
            if k is not None and (cpu is None or _EVAL_CACHE_BYTES[0] + _nbytes(cpu) <= EVAL_CACHE_MB * 2**20):
                _EVAL_CACHE[k] = {"batch": cpu, "indices": fed.indices, "bad": fed.bad}
                _EVAL_CACHE_BYTES[0] += _nbytes(cpu) if cpu is not None else 0
            yield c[0], Fed(to_model(cpu, bundle.model) if cpu is not None else None, fed.indices, fed.bad)
    finally:
        if feed is not None:
            feed.close()


def clear_eval_cache() -> None:
    _EVAL_CACHE.clear()
    _EVAL_CACHE_BYTES[0] = 0
