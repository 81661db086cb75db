"""The llmserve CLI as a user runs it (subprocesses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def llmserve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmserve", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def test_validate_quickstart() -> None:
    result = llmserve("validate", "configs/quickstart.yaml", "--routing-profiles", "configs/routing")
    assert result.returncode == 0, result.stderr
    assert "smollm2: model 'smollm2', gguf via vllm, replicas 1..1" in result.stdout


def test_validate_reports_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "configs" / "quickstart.yaml").read_text().replace("minReplicas: 1", "minReplicas: -2"))
    result = llmserve("validate", str(bad))
    assert result.returncode == 1
    assert f"error: {bad}: invalid InferenceService" in result.stderr
    assert "spec.predictor.minReplicas" in result.stderr


def test_validate_checks_the_routing_profile(tmp_path: Path) -> None:
    spec = (REPO / "configs" / "quickstart.yaml").read_text()
    bad = tmp_path / "routed.yaml"
    bad.write_text(spec.replace("    minReplicas: 1\n", "    minReplicas: 1\n    routing: {profile: nope}\n"))
    result = llmserve("validate", str(bad))
    assert result.returncode == 1
    assert "spec.predictor.routing.profile: no profile named 'nope'" in result.stderr
    good = tmp_path / "sticky.yaml"
    good.write_text(
        spec.replace("    minReplicas: 1\n", "    minReplicas: 1\n    routing: {profile: sticky-sessions}\n")
    )
    assert llmserve("validate", str(good), "--routing-profiles", "configs/routing").returncode == 0


def test_pull_of_a_local_model_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = llmserve("pull", f"file://{tmp_path}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path)
    missing = llmserve("pull", "file:///no/such/model")
    assert missing.returncode == 1
    assert "no such file or directory" in missing.stderr


def test_a_controller_reachable_from_other_machines_needs_a_token(tmp_path: Path) -> None:
    result = llmserve("controller", "--host", "0.0.0.0", "--port", "0", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert "give it a token (--token or LLMSERVE_CONTROL_TOKEN)" in result.stderr
    assert not (tmp_path / "state" / "control-token").exists()  # refused before anything was made


def test_clients_say_when_no_controller_answers(tmp_path: Path) -> None:
    result = llmserve("get", "--controller", "http://127.0.0.1:9", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert "cannot reach the controller at http://127.0.0.1:9" in result.stderr
