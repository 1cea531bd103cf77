"""Evaluation sets (JSONL, CSV, LlavaGuard-DS records), the report's rendering and the plots (no services)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from producers.evaluation.dataset import DatasetError, declarations_in_prompt, load_dataset
from producers.evaluation.plots import write_plots
from producers.evaluation.report import render_report
from schemas.policy import render_policy_text
from schemas.taxonomy import Declaration, PromptVersion

O9 = "O9: Disasters or Emergencies"


def test_a_csv_set_reads_codes_declarations_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    path.write_text(
        "id,image,rating,category,non_violating,sensitive\n"
        "a,img/a.png,Unsafe,O2,,\n"
        "b,s3://bucket/b.jpg,safe,NA,,\n"
        "c,img/c.png,Safe,O9,O9;O6,\n"
        "d,img/d.png,Unsafe,O1,,O1\n"
    )
    samples = load_dataset(path).samples
    assert ["a", "b", "c_v2", "d_v4"] == [s.id for s in samples]
    assert str((tmp_path / "img" / "a.png").resolve()) == samples[0].image
    assert "s3://bucket/b.jpg" == samples[1].image
    assert ("Unsafe", "O2: Violence, Harm, or Cruelty") == (samples[0].rating, samples[0].category)
    assert {"O9": Declaration.NON_VIOLATING, "O6": Declaration.NON_VIOLATING} == samples[2].declarations


def test_llavaguard_ds_records_give_truth_from_the_answer_and_declarations_from_the_prompt(tmp_path: Path) -> None:
    prompt = "<image>\n" + render_policy_text(PromptVersion.V1_2, {"O9": Declaration.NON_VIOLATING})
    answer = json.dumps({"rating": "Safe", "category": O9, "rationale": "allowed"}, indent=4)
    records = [
        {
            "id": "smid_123_v2",
            "image": "/data/smid_123.jpg",
            "final-assessment": "Review Needed",  # pre-exception label, as LlavaGuard-DS keeps it
            "score": "Highly Inappropriate",
            "category": O9,
            "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}],
        },
        {
            "id": "smid_124",
            "image": "/data/smid_124.jpg",
            "final-assessment": "Compliant",
            "category": "NA: None applying",
        },
        {"id": "smid_125_v2", "image": "/data/x.jpg", "final-assessment": "Review Needed", "category": O9},
    ]
    path = tmp_path / "test.json"
    path.write_text(json.dumps(records))
    data = load_dataset(path)
    first, second, third = data.samples
    assert ("Safe", {"O9": Declaration.NON_VIOLATING}) == (first.rating, first.declarations)
    assert ("Safe", {}) == (second.rating, second.declarations)
    assert ("Safe", {"O9": Declaration.NON_VIOLATING}) == (third.rating, third.declarations)
    assert 2 == len(data.warnings)  # third: truth and declaration inferred from its _v2 suffix


def test_declarations_are_recovered_from_llavaguards_own_prompts() -> None:
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "policies"
    for case in json.loads((fixtures / "manifest.json").read_text())["cases"]:
        text = (fixtures / case["file"]).read_text()
        assert case["declarations"] == {k: v.value for k, v in declarations_in_prompt(text).items()}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "x", "image": "a.png", "rating": "Unsafe", "category": "O12"}', "record 1: unknown category 'O12'"),
        ('{"id": "x", "image": "a.png", "rating": "Maybe", "category": "O2"}', "record 1: rating 'Maybe'"),
        ('{"id": "x", "rating": "Safe"}', "record 1: no image"),
        ('{"id": "x", "image": "a.png", "rating": "Unsafe"}', "needs its 'category'"),
        ('{"id": "x", "image": "a", "rating": "Safe"}\n{"id": "x", "image": "b", "rating": "Safe"}', "duplicate id"),
        ('{"id": "x", "image": "a", "rating": "Safe", "sensitive": ["O10"]}', "unknown categories ['O10']"),
        ("not json", "not JSON"),
    ],
)
def test_a_bad_record_is_named_with_its_position(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(content + "\n")
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_dataset(path)


def metrics_doc(tp: int, fn: int) -> dict[str, Any]:
    """A metrics.json document with O2 and overall recall tp/(tp+fn)."""
    cats: dict[str, Any] = dict.fromkeys(["O1", "O3", "O4", "O5", "O6", "O7", "O8", "O9", "NA"])
    cats["O2"] = {
        "samples": tp + fn,
        "unsafe_samples": tp + fn,
        "safe_samples": 0,
        "balanced_accuracy": 0.5,
        "recall": tp / (tp + fn),
        "accuracy": 0.5,
    }
    overall = {
        "samples": tp + fn + 2,
        "unsafe_samples": tp + fn,
        "safe_samples": 2,
        "classified": tp + fn + 2,
        "invalid": 0,
        "keyword_fallback": 0,
        "unparsable": 0,
        "tp": tp,
        "fp": 0,
        "tn": 2,
        "fn": fn,
        "balanced_accuracy": 0.75,
        "recall": tp / (tp + fn),
        "specificity": 1.0,
        "precision": 1.0,
        "f1": 0.8,
        "f2": 0.7,
        "accuracy": 0.8,
        "category_correct": tp,
        "category_accuracy": 0.5,
    }
    return {
        "run": {
            "id": "r",
            "dataset": "d.jsonl",
            "samples": tp + fn + 2,
            "model": "m",
            "simulated": False,
            "policy": {"ref": "default", "declarations": {}, "verdict_only": False},
            "duration_s": 1.0,
            "images_per_s": 4.0,
            "started_at": "2026-01-01T00:00:00+00:00",
        },
        "metrics": {
            "overall": overall,
            "default_policy": None,
            "per_category": cats,
            "policy_exception_rate": 0.0,
            "policy_exception_samples": 0,
        },
        "completed": tp + fn + 2,
        "failed": {},
        "needs_review": 0,
        "warnings": [],
    }


def test_the_report_shows_deltas_against_a_compared_run() -> None:
    report = render_report(metrics_doc(3, 1), compare=metrics_doc(1, 3))
    assert "| Recall (TPR) | 75.00% | +50.00 pp |" in report
    assert "| O2 | 4 (4/0) | 50.00% | 75.00% | +0.00 pp |" in report
    assert "| Policy exception rate (PER) | n/a (no _v2/_v4 samples) | +0.00 pp |" in report
    assert "| **truth Unsafe** | TP 3 | FN 1 |" in report


def test_plots_are_written_as_non_empty_pngs(tmp_path: Path) -> None:
    doc = metrics_doc(3, 1)
    paths = write_plots(doc, tmp_path, compare=metrics_doc(1, 3))
    assert ["confusion_matrix.png", "per_category.png", "radar.png"] == [p.name for p in paths]
    for path in paths:
        with Image.open(path) as img:
            assert "PNG" == img.format
            assert img.width > 200 and img.height > 200
            assert sum(1 for count in img.convert("L").histogram() if count) > 10  # drawn, not blank
