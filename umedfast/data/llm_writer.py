"""LLM annotation writer (the paper's MAU pipeline): a diagnosis prompt (image + category + box), then a reflection
prompt that reorganizes the diagnosis into "Detection -> Localization -> Recognition".

Works with any OpenAI-compatible endpoint through the ``openai`` client (``base_url``, ``model``; the key comes from
``api_key`` or ``OPENAI_API_KEY`` and is never stored on the writer, printed or logged). Each answer is validated
(every class label verbatim, every ground-truth box written in ``fmt`` and parseable with IoU >= 0.5; normal images:
no box and a "normal" statement); an invalid answer is retried, then replaced by the template answer and counted.
Successful answers are cached on disk under a content hash (prompt version, model, format, style, findings, image
bytes), so an interrupted run resumes where it stopped. Requests run with bounded concurrency and back off
exponentially on 429 / 5xx / timeouts / connection errors. Token usage is summed in ``stats``.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from umedfast.answers import says_normal
from umedfast.box_matching import iou_matrix
from umedfast.boxes import clip_box01, format_box, parse_boxes, pixels_to_unit
from umedfast.data.records import MAURecord, load_image
from umedfast.data.templates import FORMAT_HINT, apply_template, write_query

log = logging.getLogger(__name__)
PROMPT_VERSION = "mau-v1"

SYSTEM = ("You are an experienced radiologist and gastroenterologist. You write precise, factual medical image "
          "descriptions.")
DIAGNOSIS = (
    "This is a {modality} image. {findings_text} Describe the appearance and the location of each abnormality in a "
    "short diagnosis (2-4 sentences).")
DIAGNOSIS_NORMAL = ("This is a {modality} image without any abnormality. Write a short diagnosis (1-2 sentences) "
                    "stating that the image is normal.")
REFLECTION = (
    "Here is a diagnosis of a {modality} image:\n\n{diagnosis}\n\n"
    "Rewrite it as a step-by-step answer with exactly three steps, in this order: 'Detection:' (is an abnormality "
    "present), 'Localization:' (where; write each bounding box exactly as given), 'Recognition:' (the abnormal "
    "category, using exactly the category words given). At most {max_words} words. Output only the answer.\n"
    "Boxes to copy: {boxes}\nCategory names to copy: {labels}")
REFLECTION_NORMAL = (
    "Here is a diagnosis of a {modality} image:\n\n{diagnosis}\n\n"
    "Rewrite it as a step-by-step answer with three steps, 'Detection:', 'Localization:', 'Recognition:', stating "
    "that no abnormality is present and the image is normal. Do not write any bounding box or coordinates. "
    "At most {max_words} words. Output only the answer.")

_RETRYABLE_STATUS = {408, 409, 429}


@dataclass
class LLMStats:
    """Counters of one ``write_all`` run (thread-safe updates through ``add``)."""

    llm_ok: int = 0          # answers written by the LLM and validated
    cached: int = 0          # answers taken from the on-disk cache
    fallback: int = 0        # template answers used after invalid LLM answers or request failures
    invalid: int = 0         # LLM answers that failed validation (each retried or fallen back)
    request_errors: int = 0  # records whose requests failed after all retries
    retries: int = 0         # HTTP-level retries (429 / 5xx / timeout / connection)
    requests: int = 0        # chat completion calls that returned
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class RequestFailed(RuntimeError):
    pass


def validate_answer(text: str, record: MAURecord, fmt: str) -> str | None:
    """None when ``text`` is a usable answer for ``record``, else the reason it is not."""
    if not isinstance(text, str) or not text.strip():
        return "empty answer"
    size = tuple(record.image_size)
    got = parse_boxes(text, fmt, image_size=size)
    if not record.findings:
        if got:
            return "normal image but the answer writes a box"
        if not says_normal(text):
            return "normal image but the answer does not say so"
        return None
    low = text.lower()
    for f in record.findings:
        if f["label"].lower() not in low:
            return f"label {f['label']!r} missing"
    for f in record.findings:
        gt = clip_box01(pixels_to_unit(f["box_xyxy"], size))
        if not any(v >= 0.5 for v in iou_matrix([gt], got)[0]):
            return f"box of {f['label']!r} missing or wrong"
    return None


class LLMWriter:
    """Writes MAU answers with an LLM; see the module docstring.

    model: model name on the endpoint; base_url: e.g. "http://127.0.0.1:8000/v1" (None = OpenAI); api_key: None reads
    OPENAI_API_KEY; cache_dir: answer cache (None = no cache); concurrency: parallel records; max_retries: HTTP
    retries per request; attempts: LLM tries per record before the template fallback; timeout: seconds per request;
    send_image: attach the image (base64 PNG, longest side <= image_max_side) to the diagnosis prompt (False for a
    text-only model, e.g. a llama.cpp server of a text LLM); max_tokens: cap per completion (None = server default).
    """

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None, cache_dir=None,
                 fmt: str = "norm1000", style: str = "full", concurrency: int = 4, max_retries: int = 4,
                 attempts: int = 2, timeout: float = 60.0, backoff: float = 1.0, max_backoff: float = 30.0,
                 send_image: bool = True, image_max_side: int = 512, temperature: float = 0.2,
                 max_words: int = 90, max_tokens: int | None = None, client=None):
        from openai import OpenAI  # lazy: openai (~5 s, measured) only for requests to an LLM endpoint

        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if client is None and not key:
            raise ValueError("no API key: set OPENAI_API_KEY (any non-empty value for local servers that ignore it)")
        # The key lives only inside the client; our own retries replace the client's so they can be counted.
        self.client = client or OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=0)
        self.model, self.base_url, self.fmt, self.style = model, base_url, fmt, style
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.concurrency, self.max_retries, self.attempts = max(1, concurrency), max_retries, max(1, attempts)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.send_image, self.image_max_side = send_image, image_max_side
        self.temperature, self.max_words, self.max_tokens = temperature, max_words, max_tokens
        self.stats = LLMStats()

    def __repr__(self) -> str:  # never shows the key
        return f"LLMWriter(model={self.model!r}, base_url={self.base_url!r}, fmt={self.fmt!r})"

    # ---------------------------------------------------------------------------------------------- caching
    def cache_key(self, record: MAURecord) -> str:
        h = hashlib.sha256()
        try:
            h.update(Path(record.image).read_bytes())
        except OSError:
            h.update(record.image.encode())
        meta = {"v": PROMPT_VERSION, "model": self.model, "fmt": self.fmt, "style": self.style,
                "modality": record.modality, "findings": record.findings, "size": record.image_size,
                "send_image": self.send_image, "max_words": self.max_words}
        h.update(json.dumps(meta, sort_keys=True).encode())
        return h.hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def _cache_get(self, key: str) -> dict | None:
        p = self._cache_path(key)
        if p is None or not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a torn file from a killed run: redo that record

    def _cache_put(self, key: str, value: dict) -> None:
        p = self._cache_path(key)
        if p is None:
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, p)

    # --------------------------------------------------------------------------------------------- requests
    def _chat(self, messages: list) -> str:
        """One chat completion with retries/backoff on transient errors; returns the text."""
        import openai  # lazy: openai (~5 s, measured) only for requests to an LLM endpoint

        for attempt in range(self.max_retries + 1):
            try:
                extra = {"max_tokens": self.max_tokens} if self.max_tokens else {}
                resp = self.client.chat.completions.create(model=self.model, messages=messages,
                                                           temperature=self.temperature, **extra)
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                err, retry_after = e, None
            except openai.APIStatusError as e:
                if e.status_code not in _RETRYABLE_STATUS and e.status_code < 500:
                    raise RequestFailed(f"HTTP {e.status_code} from the endpoint") from None
                err, retry_after = e, e.response.headers.get("retry-after") if e.response is not None else None
            else:
                usage = getattr(resp, "usage", None)
                self.stats.add(requests=1, prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                               completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0))
                if not resp.choices:
                    return ""
                return resp.choices[0].message.content or ""
            if attempt == self.max_retries:
                raise RequestFailed(f"{type(err).__name__} after {attempt + 1} tries") from None
            self.stats.add(retries=1)
            delay = min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            try:
                delay = max(delay, min(self.max_backoff, float(retry_after))) if retry_after else delay
            except ValueError:
                pass
            log.info("retrying after %s (%.2fs)", type(err).__name__, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _image_part(self, record: MAURecord) -> dict:
        im = load_image(record)
        im.thumbnail((self.image_max_side, self.image_max_side))
        buf = io.BytesIO()
        im.save(buf, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return {"type": "image_url", "image_url": {"url": url}}

    def _prompts(self, record: MAURecord):
        size = tuple(record.image_size)
        boxes = [format_box(clip_box01(pixels_to_unit(f["box_xyxy"], size)), self.fmt, image_size=size)
                 for f in record.findings]
        if record.findings:
            items = "; ".join(f"{f['label']} at {b}" for f, b in zip(record.findings, boxes))
            text = DIAGNOSIS.format(modality=record.modality, findings_text=(
                f"Abnormal finding(s) with bounding boxes {FORMAT_HINT.get(self.fmt, '')}: {items}."))
        else:
            text = DIAGNOSIS_NORMAL.format(modality=record.modality)
        return text, boxes

    def answer(self, record: MAURecord) -> tuple[str | None, str]:
        """(validated LLM answer or None, reason of the last failure)."""
        diag_text, boxes = self._prompts(record)
        reason = ""
        for _ in range(self.attempts):
            # text-only: a plain string, which every chat template takes (llama.cpp's GGUF templates concatenate
            # message['content'] and fail on a list of parts)
            content = [self._image_part(record), {"type": "text", "text": diag_text}] if self.send_image else diag_text
            diagnosis = self._chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}])
            tmpl = REFLECTION if record.findings else REFLECTION_NORMAL
            refl = tmpl.format(modality=record.modality, diagnosis=diagnosis.strip(), max_words=self.max_words,
                               boxes=", ".join(boxes), labels=", ".join(f["label"] for f in record.findings))
            text = self._chat([{"role": "system", "content": SYSTEM}, {"role": "user", "content": refl}]).strip()
            reason = validate_answer(text, record, self.fmt) or ""
            if not reason:
                return text, ""
            self.stats.add(invalid=1)
        return None, reason

    # ------------------------------------------------------------------------------------------------- main
    def write_one(self, record: MAURecord) -> MAURecord:
        record.query = write_query(record.modality, key=record.id, fmt=self.fmt, style=self.style)
        key = self.cache_key(record)
        hit = self._cache_get(key)
        if hit is not None and isinstance(hit.get("response"), str):
            record.response = hit["response"]
            record.meta = {**record.meta, "writer": "llm", "model": self.model, "box_format": self.fmt}
            self.stats.add(cached=1)
            return record
        try:
            text, reason = self.answer(record)
        except RequestFailed as e:
            text, reason = None, str(e)
            self.stats.add(request_errors=1)
        if text is None:
            apply_template(record, fmt=self.fmt, style=self.style)
            record.meta = {**record.meta, "writer": "template-fallback", "fallback_reason": reason}
            self.stats.add(fallback=1)
            return record
        record.response = text
        record.meta = {**record.meta, "writer": "llm", "model": self.model, "box_format": self.fmt}
        self._cache_put(key, {"response": text, "model": self.model, "id": record.id})
        self.stats.add(llm_ok=1)
        return record

    def write_all(self, records: list[MAURecord], *, progress: bool = True) -> list[MAURecord]:
        """Fill query/response of every record (in place, order kept); counters in ``self.stats``."""
        # lazy: tqdm.auto (~0.5 s) only when a progress bar is shown; `umedfast-data stats` stays light
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(self.concurrency) as ex, \
                tqdm(total=len(records), desc="LLM writer", unit="rec", disable=not progress) as bar:
            for _ in ex.map(self.write_one, records):
                bar.update(1)
                bar.set_postfix(fallback=self.stats.fallback, tokens=self.stats.prompt_tokens
                                + self.stats.completion_tokens, refresh=False)
        return records
