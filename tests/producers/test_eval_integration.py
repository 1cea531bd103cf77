"""``guardq eval`` end to end on real services: a labelled set synthesised with Pillow, answers scripted by colour.

The SGLang test server decides by an image's mean colour (rules below); the test chooses each image's ground
truth, so it knows the confusion matrix and PER the evaluation must report.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from PIL import Image
from typer.testing import CliRunner

from producers.broker import JobQueue
from producers.cli import app
from producers.cli import common as cli_common
from producers.evaluation.dataset import load_dataset
from producers.evaluation.report import write_outputs
from producers.evaluation.runner import EvalRunner
from producers.policy_store import PolicyStore
from producers.uploads import UploadStore
from schemas.settings import Settings
from tests import images
from tests.conftest import BUCKET
from tests.services.procs import Service
from tests.sglang_server import SimulatedSGLang
from tests.sglang_server.server import Rule

pytestmark = pytest.mark.integration

RED, DARK, ORANGE, PURPLE, BLUE = (220, 30, 30), (30, 30, 30), (230, 140, 20), (150, 40, 160), (40, 120, 200)
O2, O3, O9 = "O2: Violence, Harm, or Cruelty", "O3: Sexual Content", "O9: Disasters or Emergencies"
RULES = [
    Rule(RED, "Unsafe", O2),
    Rule(DARK, "Unsafe", O9, tolerance=30),
    Rule(ORANGE, "Safe", O9),  # the model honours "O9 non-violating" for these images
    Rule(PURPLE, "Unsafe", O3),
]  # anything else (BLUE) → Safe, NA


def labelled_set(folder: Path, s3_client: Any) -> Path:
    """14 records: images the test paints, labels it chooses, one missing file and one non-image."""
    folder.mkdir(parents=True, exist_ok=True)

    def png(name: str, rgb: tuple[int, int, int]) -> str:
        Image.new("RGB", (48, 40), rgb).save(folder / name)
        return name

    s3_key = f"eval/{uuid.uuid4().hex}.jpg"
    s3_client.put_object(Bucket=BUCKET, Key=s3_key, Body=images.solid(RED))
    (folder / "notes.jpg").write_bytes(b"this is not an image")
    records = [
        {"id": "red1", "image": png("red1.png", RED), "rating": "Unsafe", "category": "O2"},  # TP
        {"id": "red2", "image": f"s3://{BUCKET}/{s3_key}", "rating": "Unsafe", "category": O2},  # TP via S3
        {"id": "purple", "image": png("purple.png", PURPLE), "rating": "Unsafe", "category": "O3"},  # TP
        {"id": "blue-missed", "image": png("b0.png", BLUE), "rating": "Unsafe", "category": "O3"},  # FN
        *({"id": f"blue{i}", "image": png(f"b{i}.png", BLUE), "rating": "Safe", "category": "NA"} for i in (1, 2, 3)),
        {"id": "red-safe", "image": png("red3.png", RED), "final-assessment": "Compliant", "category": "NA"},  # FP
        # policy exceptions (LlavaGuard-DS ids): O9 declared non-violating, truth Safe
        {"id": "dark_v2", "image": png("dark.png", DARK), "rating": "Safe", "category": O9, "non_violating": ["O9"]},
        {"id": "orange_v2", "image": png("o1.png", ORANGE), "rating": "Safe", "category": O9, "non_violating": ["O9"]},
        {"id": "orange2_v2", "image": png("o2.png", ORANGE), "rating": "Safe", "category": O9},  # policy from id
        {
            "id": "orange3",
            "image": png("o3.png", ORANGE),
            "rating": "Safe",
            "category": O9,
            "declarations": {"O9": "non_violating"},
        },
        {"id": "gone", "image": "missing.png", "rating": "Unsafe", "category": "O2"},  # invalid: missing file
        {"id": "text", "image": "notes.jpg", "rating": "Safe", "category": "NA"},  # invalid: not an image
    ]
    path = folder / "set.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_eval_reports_the_expected_confusion_matrix_per_and_failures(
    worker: Service, sim: SimulatedSGLang, job_queue: JobQueue, settings: Settings, s3_client: Any, tmp_path: Path
) -> None:
    sim.configure(rules=RULES)
    dataset = load_dataset(labelled_set(tmp_path / "set", s3_client))
    assert "orange3_v2" in [s.id for s in dataset.samples]  # declarations without a suffix get LlavaGuard's
    runner = EvalRunner(job_queue, UploadStore(settings), PolicyStore(job_queue.redis))
    run = runner.run(dataset, model=settings.model, timeout_s=60)
    metrics = write_outputs(run, tmp_path / "out")
    o, m = metrics["metrics"]["overall"], metrics["metrics"]
    assert (3, 2, 6, 1) == (o["tp"], o["fp"], o["tn"], o["fn"])
    assert (14, 12, 2) == (o["samples"], o["classified"], o["invalid"])
    assert {"missing_image": 1, "not_an_image": 1} == metrics["failed"]
    assert (0.75, 4) == (m["policy_exception_rate"], m["policy_exception_samples"])  # 3 of dark + 3 orange
    assert (0.75, 0.75, 0.75) == (o["recall"], o["specificity"], o["balanced_accuracy"])
    assert m["per_category"]["O9"] is not None and 0.375 == m["per_category"]["O9"]["balanced_accuracy"]  # TNR 3/4
    assert m["per_category"]["O2"] is not None and 1.0 == m["per_category"]["O2"]["recall"]
    assert m["per_category"]["O3"] is not None and 0.5 == m["per_category"]["O3"]["recall"]
    assert metrics["run"]["simulated"] is True
    requests = {r["rid"].split(".")[0]: r["policy_text"] for r in sim.chat_requests()}
    exception_jobs = [r.job_id for r in run.results if r.sample.id.endswith("_v2")]
    assert all("Category O9 is declared as non-violating" in requests[j] for j in exception_jobs if j)
    for name in ("report.md", "metrics.json", "predictions.jsonl"):
        assert (tmp_path / "out" / name).stat().st_size > 0


@pytest.fixture
def cli_env(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in worker_env.items():
        monkeypatch.setenv(key, value)
    cli_common.settings.cache_clear()
    cli_common.job_queue.cache_clear()
    yield
    cli_common.job_queue.cache_clear()
    cli_common.settings.cache_clear()
    structlog.reset_defaults()


def test_guardq_eval_writes_the_report_and_compare_shows_deltas(
    cli_env: None, worker: Service, sim: SimulatedSGLang, s3_client: Any, tmp_path: Path
) -> None:
    sim.configure(rules=RULES)
    dataset = labelled_set(tmp_path / "set", s3_client)
    first = CliRunner().invoke(app, ["eval", str(dataset), "--out", str(tmp_path / "a"), "--timeout", "60"])
    assert 0 == first.exit_code, first.output
    assert "balanced accuracy 75.00%, recall 75.00%, PER 75.00%" in first.stdout
    sim.configure(rules=RULES[:2])  # the model now flags nothing orange or purple
    second = CliRunner().invoke(
        app,
        [
            "eval",
            str(dataset),
            "--out",
            str(tmp_path / "b"),
            "--timeout",
            "60",
            "--compare",
            str(tmp_path / "a" / "metrics.json"),
        ],
    )
    assert 0 == second.exit_code, second.output
    report = (tmp_path / "b" / "report.md").read_text()
    assert "| Recall (TPR) | 50.00% | -25.00 pp |" in report
    assert "| Policy exception rate (PER) | 75.00% | +0.00 pp |" in report
    assert "![radar](radar.png)" in report
    assert (tmp_path / "b" / "radar.png").stat().st_size > 1000


def test_a_bad_dataset_exits_with_one_clear_line(cli_env: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "image": "a.png", "rating": "Unsafe", "category": "O12"}\n')
    result = CliRunner().invoke(app, ["eval", str(bad), "--out", str(tmp_path / "o")])
    assert 2 == result.exit_code
    assert "record 1: unknown category 'O12'" in result.stderr


def test_guardq_eval_reports_each_image_detail_level_side_by_side(
    cli_env: None, worker: Service, sim: SimulatedSGLang, s3_client: Any, tmp_path: Path
) -> None:
    sim.configure(rules=RULES)
    dataset = labelled_set(tmp_path / "set", s3_client)
    out = tmp_path / "levels"
    result = CliRunner().invoke(
        app, ["eval", str(dataset), "--out", str(out), "--timeout", "60", "--image-detail", "native,base", "--no-plots"]
    )
    assert 0 == result.exit_code, result.output
    table = (out / "levels.md").read_text()
    assert ["native", "base"] == [
        line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| n") or line.startswith("| b")
    ]
    assert (out / "native" / "report.md").exists() and (out / "base" / "report.md").exists()
    # the 7B checkpoint's input is one 336-px tile at either level: same verdicts, same accuracy
    assert 1 == len({line.split("|")[2] for line in table.splitlines()[4:]})


def test_a_bad_image_detail_level_exits_with_one_clear_line(cli_env: None, tmp_path: Path) -> None:
    data = tmp_path / "set.jsonl"
    data.write_text('{"id": "x", "image": "a.png", "rating": "Safe", "category": "NA"}\n')
    result = CliRunner().invoke(app, ["eval", str(data), "--image-detail", "native,tiny"])
    assert 2 == result.exit_code
    assert "guardq: --image-detail: 'tiny' is not a level; use native, base or native,base\n" == result.stderr
