"""Datasets for abnormal-aware training: source adapters, MAU records, template/LLM writers, MAU-Synth, splits."""
from umedfast.data.classes import CLASS_SYNONYMS, MODALITY, SOURCES, synonyms
from umedfast.data.records import Finding, MAURecord, load_image, read_mau, record_targets, write_mau

__all__ = ["CLASS_SYNONYMS", "MODALITY", "SOURCES", "synonyms", "Finding", "MAURecord", "load_image", "read_mau",
           "record_targets", "write_mau", "load_source", "synth", "splits"]


def __getattr__(name):
    # Lazy so that `import umedfast.data` stays light (synth pulls numpy-heavy code, sources pull csv/yaml).
    if name == "load_source":
        from umedfast.data.sources import load_source
        return load_source
    if name in ("synth", "splits", "templates", "sources"):
        import importlib
        return importlib.import_module(f"umedfast.data.{name}")
    raise AttributeError(f"module 'umedfast.data' has no attribute {name!r}")
