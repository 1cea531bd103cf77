"""``guardq policy create|list|show|diff|delete|set-default`` against a real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import structlog
from typer.testing import CliRunner

from producers.cli import app
from producers.cli import common as cli_common
from schemas.policy import SENSITIVE_WARNING, Policy
from schemas.taxonomy import PromptVersion

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("GUARDQ_REDIS_URL", redis_url)
    monkeypatch.delenv("GUARDQ_MODEL", raising=False)
    cli_common.settings.cache_clear()
    cli_common.job_queue.cache_clear()
    yield CliRunner()
    cli_common.job_queue.cache_clear()
    cli_common.settings.cache_clear()
    structlog.reset_defaults()  # the commands configure logging for their process; undo it for other tests


def run(cli: CliRunner, *args: str) -> tuple[int, str, str]:
    result = cli.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_create_prints_the_new_version_with_its_sha256(cli: CliRunner) -> None:
    name = f"kids-{uuid.uuid4().hex[:8]}"
    code, out, _ = run(cli, "policy", "create", name, "--non-violating", "O9", "--unsafe-threshold", "0.3")
    assert 0 == code
    first = json.loads(out)
    expected = Policy(name=name, declarations={"O9": "non_violating"}).sha256(PromptVersion.V1_0)
    assert (1, True, {"O9": "non_violating"}, 0.3, expected) == (
        first["version"],
        first["created"],
        first["declarations"],
        first["unsafe_threshold"],
        first["sha256"],
    )
    code, out, _ = run(
        cli, "policy", "create", name, "--non-violating", "O9", "--verdict-only", "--base-version", "v1.2"
    )
    second = json.loads(out)
    assert (0, 2, "v1.2", True) == (code, second["version"], second["prompt_version"], second["verdict_only"])


def test_an_unknown_category_exits_non_zero_with_one_line_naming_the_valid_ones(cli: CliRunner) -> None:
    code, out, err = run(cli, "policy", "create", "x-bad", "--non-violating", "O12")
    assert 2 == code
    assert "" == out
    assert 1 == len(err.strip().splitlines())
    assert "unknown policy category 'O12'; valid categories: O1" in err


def test_a_sensitive_declaration_warns_once_on_stderr(cli: CliRunner) -> None:
    code, _, err = run(cli, "policy", "create", f"s-{uuid.uuid4().hex[:8]}", "--sensitive", "O2")
    assert 0 == code
    assert [f"guardq: warning: {SENSITIVE_WARNING}"] == err.strip().splitlines()


def test_list_show_diff_set_default_and_delete(cli: CliRunner) -> None:
    name, tenant = f"p-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    run(cli, "policy", "create", name, "--non-violating", "O9")
    run(cli, "policy", "create", name, "--non-violating", "O6")
    code, out, _ = run(cli, "policy", "list", "--json")
    listed = {json.loads(line)["name"]: json.loads(line) for line in out.splitlines()}
    assert 0 == code and 2 == listed[name]["version"]

    code, out, _ = run(cli, "policy", "show", f"{name}@1", "--text")
    assert (0, Policy(declarations={"O9": "non_violating"}).text(PromptVersion.V1_0)) == (code, out.rstrip("\n"))

    code, out, _ = run(cli, "policy", "diff", f"{name}@1", f"{name}@2")
    assert 0 == code
    assert "declaration O6: default -> non_violating" in out
    assert "declaration O9: non_violating -> default" in out
    assert "+Category O6 is declared as non-violating" in out

    code, out, _ = run(cli, "policy", "set-default", name, "--tenant", tenant)
    assert (0, f"tenant {tenant}: {name} (now {name}@2)") == (code, out.strip())
    code, _, err = run(cli, "policy", "delete", name)
    assert 1 == code and tenant in err
    run(cli, "policy", "set-default", "default", "--tenant", tenant)
    code, out, _ = run(cli, "policy", "delete", name)
    assert 0 == code and f"deleted {name}" in out
    code, _, err = run(cli, "policy", "show", name)
    assert 1 == code and "deleted" in err


def test_show_without_a_name_still_prints_the_ad_hoc_policy_text(cli: CliRunner) -> None:
    code, out, _ = run(cli, "policy", "show", "--model", "AIML-TUDA/LlavaGuard-v1.2-7B-OV", "--non-violating", "O9")
    expected = Policy(declarations={"O9": "non_violating"}).text(PromptVersion.V1_2)
    assert (0, expected) == (code, out.rstrip("\n"))


def test_showing_an_unknown_policy_exits_one(cli: CliRunner) -> None:
    code, _, err = run(cli, "policy", "show", "no-such-policy-anywhere")
    assert 1 == code and "no stored policy" in err
