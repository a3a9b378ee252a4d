"""The records a training run uses: the MAU file (or MAU-Synth generated into the output folder), split into
training and held-out records, with the user mistakes refused before any model loads."""
from __future__ import annotations

from pathlib import Path

from umedfast.config import TrainConfig
from umedfast.data import read_mau, splits, synth
from umedfast.data.records import check_images
from umedfast.errors import MissingPathError, UserError
from umedfast.train.distributed import Dist, barrier


def load_records(cfg: TrainConfig, d: Dist) -> tuple[list, list]:
    """(train records, held-out records). With no ``data.path``, MAU-Synth is generated once into OUTPUT/data.

    User mistakes raise ``UserError`` (one line at the CLI): a missing or empty data file, a malformed line
    (file:line), no training records, or records whose image files are missing (checked here, before any model
    is loaded, naming the first few)."""
    if cfg.data.path:
        path = Path(cfg.data.path)
        if not path.is_file():
            raise MissingPathError(f"data.path {str(path)!r} does not exist" if not path.exists()
                                   else f"data.path {str(path)!r} is not a file (give the MAU JSONL)")
    else:

        out = Path(cfg.output_dir) / "data"
        path = out / synth.JSONL_NAME
        if d.is_main and not path.is_file():
            synth.generate(cfg.data.synth_n, out, seed=cfg.data.synth_seed, image_size=cfg.data.synth_image_size,
                           box_format=cfg.data.box_format, style=cfg.data.style, progress=cfg.progress)
        barrier(d)
    records = read_mau(path)
    if not records:
        raise UserError(f"{path} holds no records (an empty file); build one with umedfast-data build/synth")
    gen = cfg.data.generalization or None
    train = splits.select(records, "train", gen)
    held = splits.select(records, cfg.data.eval_split, gen)
    if cfg.data.synth_eval_n and not cfg.data.path and not gen:  # evaluation-only images, never trained on
        held = synth_eval_records(cfg, d)
    if cfg.data.max_train:
        train = train[:cfg.data.max_train]
    if cfg.data.max_eval:
        held = held[:cfg.data.max_eval]
    if not train:
        raise UserError(f"no training records in {path} (split 'train'"
                        + (f", generalization {gen}" if gen else "") + f"; {len(records)} records in the file)")
    check_images(train + held, path)
    return train, held


def synth_set(cfg: TrainConfig, d: Dist, folder: str, n: int, seed: int) -> list:
    """``n`` MAU-Synth records generated once (by the main rank) into OUTPUT/``folder`` with ``seed``."""
    out = Path(cfg.output_dir) / folder
    path = out / synth.JSONL_NAME
    if d.is_main and not path.is_file():
        synth.generate(n, out, seed=seed, image_size=cfg.data.synth_image_size, box_format=cfg.data.box_format,
                       style=cfg.data.style, progress=cfg.progress)
    barrier(d)
    return read_mau(path)


def synth_eval_records(cfg: TrainConfig, d: Dist) -> list:
    """``data.synth_eval_n`` MAU-Synth images from another seed (``synth_seed + 1``), all held out, generated once
    into OUTPUT/data_eval: a test set large enough for paired comparisons (~1,000 images) at no training cost."""
    return synth_set(cfg, d, "data_eval", cfg.data.synth_eval_n, cfg.data.synth_seed + 1)


def ppo_query_records(cfg: TrainConfig, d: Dist, train: list) -> list:
    """The records stage 2 samples its queries from: ``train`` (the records SFT trained on), or with
    ``data.synth_ppo_n`` that many fresh MAU-Synth images (seed ``synth_seed + 2``, OUTPUT/data_ppo) that SFT never
    saw. Why fresh: on images SFT fitted for many epochs its answers are already right, so the rewards carry almost
    no information the cross-entropy lacked (docs/experiments/2026-11-30-wave2-baselines-and-boxes.md)."""
    if not cfg.data.synth_ppo_n or cfg.data.path:
        return train
    recs = synth_set(cfg, d, "data_ppo", cfg.data.synth_ppo_n, cfg.data.synth_seed + 2)
    if cfg.data.max_train:
        recs = recs[:cfg.data.max_train]
    check_images(recs, Path(cfg.output_dir) / "data_ppo" / synth.JSONL_NAME,
                 hint="delete OUTPUT/data_ppo to regenerate it")
    return recs
