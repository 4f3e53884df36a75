"""One type for a streaming state and one home for its tensor names (dfnet4_sdk/states.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dfnet4_sdk import manifest, states
from dfnet4_sdk.models import load_model
from dfnet4_sdk.models.base import StateSpec as ModelStateSpec
from dfnet4_sdk.models.manifest_builder import describe_model
from dfnet4_sdk.states import StateSpec

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "dfnet4_sdk" / "assets"


def test_names_round_trip():
    assert states.state_input_name("enc_gru") == "state_in.enc_gru"
    assert states.state_output_name("enc_gru") == "state_out.enc_gru"
    assert states.state_name("state_in.enc_gru") == states.state_name("state_out.enc_gru") == "enc_gru"
    assert states.state_name("lsnr") == "lsnr"
    assert states.fed_back_as("state_out.df_dec_gru") == "state_in.df_dec_gru"
    assert states.state_pairs(["feat_erb", "state_in.a", "state_in.b"]) == [
        ("state_in.a", "state_out.a"), ("state_in.b", "state_out.b")]
    with pytest.raises(ValueError, match="not a state output"):
        states.fed_back_as("state_in.enc_gru")


def test_model_and_manifest_share_one_state_type():
    assert ModelStateSpec is StateSpec is manifest.StateSpec
    assert not hasattr(manifest, "StateSpecEntry")
    m = describe_model(load_model("dfnet4-lite"))
    assert m.states and all(type(s) is StateSpec and s.graph for s in m.states)
    assert {s.role for s in m.states} == {"model", "erb_norm", "spec_norm", "spectrum_history"}


def test_initial_values_numpy_and_torch():
    s = StateSpec("norm", (1, 3), init_values=(0.5, -1.0, 2.0))
    assert s.initial().shape == (1, 3) and s.initial().dtype == np.float32
    two = s.initial(2)
    assert two.shape == (2, 3) and np.array_equal(two[1], [0.5, -1.0, 2.0])
    t = s.initial_tensor(4)
    assert t.shape == (4, 3) and t.dtype == torch.float32 and float(t[3, 2]) == 2.0
    z = StateSpec("gru", (1, 2, 8), init_value=0.25)
    assert z.initial(3).shape == (3, 2, 8) and np.all(z.initial() == 0.25)


def test_manifest_state_json_round_trips_in_its_schema_order():
    m = describe_model(load_model("dfnet4-lite"))
    data = json.loads(m.to_json())
    assert [list(s) for s in data["states"][:1]] == [["name", "graph", "shape", "init_value", "role"]]
    frame_norm = next(s for s in data["states"] if s["role"] == "erb_norm")
    assert list(frame_norm) == ["name", "graph", "shape", "init_values", "role"]
    assert manifest.Manifest.from_json(m.to_json()).states == m.states


def test_a_state_without_a_graph_is_refused():
    data = json.loads((ASSETS / "dfnet4-lite-v1-onnx" / "manifest.json").read_text())
    del data["states"][0]["graph"]
    with pytest.raises(Exception, match=r"missing keys \['graph'\]"):
        manifest.Manifest.from_dict(data)


def test_no_module_spells_the_state_prefixes_itself():
    """state_in./state_out. names are built and read only in dfnet4_sdk/states.py."""
    pattern = re.compile(r"""["']state_(in|out)\.["{]|f["']state_(in|out)\.\{""")
    offenders = []
    for folder in ("dfnet4_sdk", "exporters", "runtimes", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "states.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []
