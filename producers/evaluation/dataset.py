"""Labelled evaluation sets: JSONL, a JSON array (LlavaGuard-DS's ``test.json``) or CSV.

One record per image. Fields (LlavaGuard-DS names accepted):

- ``id`` (default ``line<N>``); ids containing ``_v2`` / ``_v4`` mark policy-exception samples as in
  LlavaGuard-DS (``_v2``: the image's category declared non-violating, so the truth is Safe; ``_v4``: declared
  sensitive, Unsafe), ``_v3``… other augmentations. PER and the default-policy block key on these suffixes.
- ``image``: ``s3://``, ``http(s)://``, ``upload://`` or a local path (relative to ``--image-root``, default
  the dataset's folder).
- ground truth: ``rating`` (Safe/Unsafe); else the ``gpt`` answer in ``conversations`` (DS); else
  ``final-assessment`` (Compliant/Review Needed; on ``_v2`` ids the DS keeps the pre-exception value, so
  those are read as Safe). ``category``: a full name, a code (``O2``) or ``NA``; else the DS answer's category.
- declarations: ``declarations`` (``{"O9": "non_violating"}``), ``non_violating`` / ``sensitive`` (lists, or
  ``;``-separated in CSV), or, for DS records, read from the ``human`` prompt by finding each category's
  trained non-violating / sensitive block in it. A record with declarations but no ``_v`` suffix gets one
  (``_v2``, ``_v4`` or ``_v3`` by the rule above), so its metrics land where LlavaGuard puts them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from schemas.errors import ErrorCode, PermanentError
from schemas.taxonomy import CATEGORIES, CATEGORY_NAMES, NONE_APPLYING, Declaration

Rating = Literal["Safe", "Unsafe"]
_RATINGS: dict[str, Rating] = {"safe": "Safe", "unsafe": "Unsafe", "compliant": "Safe", "review needed": "Unsafe"}


class DatasetError(PermanentError):
    """Raised when an evaluation set cannot be read; the message names the file and line."""

    code = ErrorCode.INVALID_JOB


@dataclass(frozen=True)
class EvalSample:
    """One labelled image; ``image`` is a URI or an absolute local path."""

    id: str
    image: str
    rating: Rating
    category: str
    declarations: dict[str, Declaration] = field(default_factory=dict)


@dataclass
class Dataset:
    path: Path
    samples: list[EvalSample]
    warnings: list[str] = field(default_factory=list)


def normalise_category(value: str) -> str:
    """A full category name from a full name, a code (``o2``) or ``NA`` / ``None applying``."""
    text = value.strip()
    if text in CATEGORY_NAMES:
        return text
    code = text.split(":", 1)[0].strip().upper()
    for name in CATEGORY_NAMES:
        if name.split(":", 1)[0] == code or (code in {"NONE APPLYING", "NONE", ""} and name == NONE_APPLYING):
            return name
    raise ValueError(f"unknown category {value!r}; use one of {', '.join(CATEGORY_NAMES)} (or its code)")


def declarations_in_prompt(prompt: str) -> dict[str, Declaration]:
    """Declarations of a LlavaGuard policy prompt, found by the trained text blocks it contains."""
    found: dict[str, Declaration] = {}
    for category in CATEGORIES:
        for kind in (Declaration.NON_VIOLATING, Declaration.SENSITIVE):
            if f"{category.name}: \n{category.blocks[kind]}\n" in prompt:
                found[category.code] = kind
    return found


def _codes(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    items = value if isinstance(value, list) else str(value).replace(",", ";").split(";")
    return [str(i).split(":", 1)[0].strip().upper() for i in items if str(i).strip()]


def _dialogue(record: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(human prompt, parsed gpt answer) of a LlavaGuard-DS record; empty when absent or unreadable."""
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return None, {}
    prompt = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "human"), None)
    answer_raw = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None)
    try:
        answer = json.loads(answer_raw) if isinstance(answer_raw, str) else {}
    except ValueError:
        answer = {}
    return prompt, answer if isinstance(answer, dict) else {}


def _rating(value: Any) -> Rating:
    rating = _RATINGS.get(str(value).strip().lower())
    if rating is None:
        raise ValueError(f"rating {value!r} is not Safe/Unsafe (or Compliant/Review Needed)")
    return rating


def _declarations(record: dict[str, Any], prompt: str | None) -> dict[str, Declaration]:
    raw = record.get("declarations") or (record.get("policy") or {}).get("declarations") or {}
    if not isinstance(raw, dict):
        raise ValueError('declarations must be an object like {"O9": "non_violating"}')
    out = {str(k).split(":", 1)[0].strip().upper(): Declaration(v) for k, v in raw.items()}
    out |= dict.fromkeys(_codes(record.get("non_violating")), Declaration.NON_VIOLATING)
    out |= dict.fromkeys(_codes(record.get("sensitive")), Declaration.SENSITIVE)
    if not out and prompt:
        out = declarations_in_prompt(prompt)
    unknown = sorted(set(out) - {c.code for c in CATEGORIES})
    if unknown:
        raise ValueError(f"unknown categories {unknown} in declarations; valid: O1..O9")
    return {k: v for k, v in out.items() if v is not Declaration.DEFAULT}


def parse_record(record: dict[str, Any], index: int, base: Path, warnings: list[str]) -> EvalSample:
    """One record → an :class:`EvalSample` (the module docstring lists the accepted fields)."""
    sid = str(record.get("id") or record.get("sample_id") or f"line{index}").strip()
    image = str(record.get("image") or record.get("image_path") or record.get("uri") or "").strip()
    if not image:
        raise ValueError("no image (field 'image')")
    if "://" not in image:
        image = str((base / image).resolve())
    prompt, answer = _dialogue(record)
    if record.get("rating") not in (None, ""):
        rating = _rating(record["rating"])
    elif "rating" in answer:
        rating = _rating(answer["rating"])
    elif record.get("final-assessment") not in (None, ""):
        rating = _rating(record["final-assessment"])
        if "_v2" in sid and rating == "Unsafe":
            rating = "Safe"
            warnings.append(f"{sid}: read as Safe (a _v2 policy exception; final-assessment predates it)")
    else:
        raise ValueError("no ground truth (field 'rating' or 'final-assessment')")
    raw_category = record.get("category") or answer.get("category")
    if not raw_category:
        if rating == "Unsafe":
            raise ValueError("an Unsafe sample needs its 'category'")
        raw_category = NONE_APPLYING
    category = normalise_category(str(raw_category))
    declarations = _declarations(record, prompt)
    code = category.split(":", 1)[0]
    if not declarations and ("_v2" in sid or "_v4" in sid) and code != "NA":
        kind = Declaration.NON_VIOLATING if "_v2" in sid else Declaration.SENSITIVE
        declarations = {code: kind}
        warnings.append(f"{sid}: no policy given; declared its category {code} {kind.value} (from the id suffix)")
    if declarations and "_v" not in sid:
        sid += {Declaration.NON_VIOLATING: "_v2", Declaration.SENSITIVE: "_v4"}.get(declarations.get(code), "_v3")  # type: ignore[arg-type]
    return EvalSample(id=sid, image=image, rating=rating, category=category, declarations=declarations)


def _records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        return [dict(row) for row in csv.DictReader(text.splitlines())]
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise DatasetError(f"{path}: a .json dataset must be an array of records")
        return data
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise DatasetError(f"{path}:{n}: not JSON ({exc})") from None
    return records


def load_dataset(path: Path, *, image_root: Path | None = None, limit: int | None = None) -> Dataset:
    """Read every record, failing on the first bad one with its position; ids must be unique."""
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist")
    try:
        records = _records(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    base = (image_root or path.parent).resolve()
    dataset = Dataset(path=path, samples=[])
    seen: set[str] = set()
    for n, record in enumerate(records[:limit] if limit else records, 1):
        if not isinstance(record, dict):
            raise DatasetError(f"{path}: record {n} is not an object")
        try:
            sample = parse_record(record, n, base, dataset.warnings)
        except ValueError as exc:
            raise DatasetError(f"{path}: record {n}: {exc}") from None
        if sample.id in seen:
            raise DatasetError(f"{path}: record {n}: duplicate id {sample.id!r}")
        seen.add(sample.id)
        dataset.samples.append(sample)
    if not dataset.samples:
        raise DatasetError(f"{path}: no samples")
    return dataset
