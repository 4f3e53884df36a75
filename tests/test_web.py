"""The browser runtime in web/:

- `npm test` there: golden fixtures replayed in node and in headless Chromium, web/cli.js against
  `dfsdk run` to >= 60 dB on real speech, silence, the attenuation limit, post-filter and gating,
  int8 weights against `dfsdk run` on the same int8 bundle;
- `dfsdk conformance --client "node web/cli.js ..."`: every probe of the port check passes;

on DFN3 ONNX fp32 and int8 bundles and a dfnet4-16k fp32 bundle (16 kHz, Mamba, waveform input)
exported here. Skips, with the reason, where node, npm or
Chromium is missing (.ci/run installs them)."""

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
DFSDK = Path(sys.executable).with_name("dfsdk")  # the SDK under test writes the references


def _missing(tools: tuple[str, ...]) -> list[str]:
    missing = [tool for tool in tools if tool != "chromium" and shutil.which(tool) is None]
    if "chromium" in tools and not os.environ.get("CHROMIUM_PATH") and not any(shutil.which(c) for c in CHROMIUM):
        missing.append("chromium (apt-get install chromium)")
    return missing


def _require(*tools: str) -> None:
    missing = _missing(tools)
    if missing and os.environ.get("DFNET4_SDK_REQUIRE_WEB"):  # CI: web/ is part of the product
        pytest.fail(f"web/ needs {', '.join(missing)} and DFNET4_SDK_REQUIRE_WEB is set (.ci/run installs them)")
    if missing:
        pytest.skip(f"web/ needs {', '.join(missing)}; .ci/run installs them")


@pytest.fixture(scope="module")
def web_env(shared_exports, dfn3) -> dict[str, str]:
    """web/'s npm packages installed and the bundles exported; the environment npm test reads."""
    _require("node", "npm")
    cache = BundleCache(shared_exports, dfn3, "onnx")
    env = {
        **os.environ,
        "DFNET4_WEB_BUNDLE": str(cache.get("dfn3", "fp32").root),
        "DFNET4_WEB_INT8_BUNDLE": str(cache.get("dfn3", "int8").root),
        "DFNET4_WEB_16K_BUNDLE": str(cache.get("dfnet4-16k", "fp32").root),
        "DFSDK": str(DFSDK),
    }
    if not (WEB / "node_modules").is_dir():  # .ci/run has run `npm ci` already
        ci = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, env=env, capture_output=True, text=True,
                            timeout=NPM_TIMEOUT_S)
        assert ci.returncode == 0, ci.stdout[-3000:] + ci.stderr[-3000:]
    return env


@pytest.mark.slow
def test_npm_test_in_web_passes(web_env):
    _require("chromium")
    result = subprocess.run(["npm", "test"], cwd=WEB, env=web_env, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    # node's test runner closes with the counts; the browser tests ran (they skip without Chromium).
    assert "# fail 0" in output and "# SKIP no Chromium" not in output, output[-3000:]
    print("\n".join(line.strip() for line in output.splitlines() if line.strip().startswith("# ")
                    and not line.strip().startswith("# Subtest") and ("dB" in line or " ms" in line)))


@pytest.mark.slow
def test_web_cli_passes_dfsdk_conformance_client(web_env):
    client = f"node {WEB / 'cli.js'} {{bundle}} {{input}} {{output}}"
    result = subprocess.run([str(DFSDK), "conformance", web_env["DFNET4_WEB_BUNDLE"], "--client", client], env=web_env,
                            capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    output = result.stdout + result.stderr
    print(output)
    assert result.returncode == 0, output[-4000:]
    assert "client passed all" in output, output[-4000:]
