"""The browser runtime in web/: `npm test` there (golden fixtures replayed in node and in headless
Chromium, web/cli.js against `dfsdk run` to >= 60 dB on real speech, silence, the attenuation
limit, post-filter and gating; int8 weights against `dfsdk run` on the same int8 bundle) on DFN3
ONNX fp32 and int8 bundles exported here.

Skips, with the reason, where node, npm or Chromium is missing (.ci/run installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from export_cache import BundleCache

WEB = Path(__file__).resolve().parents[1] / "web"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
NPM_TIMEOUT_S = 1200


def _missing_tools() -> list[str]:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if not os.environ.get("CHROMIUM_PATH") and not any(shutil.which(c) for c in CHROMIUM):
        missing.append("chromium (apt-get install chromium)")
    return missing


def _npm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["npm", *args], cwd=WEB, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)


@pytest.mark.slow
def test_npm_test_in_web_passes(tmp_path, dfn3):
    missing = _missing_tools()
    if missing:
        pytest.skip(f"web/ needs {', '.join(missing)}; .ci/run installs them")
    cache = BundleCache(tmp_path, dfn3, "onnx")
    env = {
        **os.environ,
        "DFNET4_WEB_BUNDLE": str(cache.get("dfn3", "fp32").root),
        "DFNET4_WEB_INT8_BUNDLE": str(cache.get("dfn3", "int8").root),
        "DFSDK": str(Path(sys.executable).with_name("dfsdk")),  # the SDK under test writes the references
    }
    if not (WEB / "node_modules").is_dir():  # .ci/run has run `npm ci` already
        ci = _npm("ci", "--no-audit", "--no-fund", env=env)
        assert ci.returncode == 0, ci.stdout[-3000:] + ci.stderr[-3000:]
    result = _npm("test", env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # node's test runner closes with the counts: every test ran (the browser ones skip without Chromium).
    assert "# fail 0" in output and "# skipped 0" in output, output[-3000:]
    print("\n".join(line for line in output.splitlines() if line.startswith("# ") and not line.startswith("# Subtest") and ("dB" in line or " ms" in line)))
