"""Which component carries a student's gap to DFN3: assemble models whose enc / erb_dec / df_dec
each come whole from the student or from DFN3, and score every assembly on the held-out sets.

    python -m dfnet4_sdk.training.splice training/resume/dfnet4_dfn3conv_gpu1.pt --json splices.json

A component from DFN3 gets DFN3's GRU backbone and layer count (``dfn3_init`` copies it exactly);
one from the student keeps the student's backbone and weights (``dfn3_init.take_components``).
The assemblies are meaningful without training only for students distilled on DFN3's hidden
states at the component boundaries (``distill_hidden_names``: emb, erb_dec_h, df_dec_h), such as
the ``dfnet4-dfn3conv`` students; for any other student the table says so by its scores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from dataclasses import replace
from pathlib import Path

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models import load_model
from dfnet4_sdk.models.dfn3_init import init_from_dfn3, take_components
from dfnet4_sdk.models.dfnet4 import PRESETS, DfNet4
from dfnet4_sdk.models.dfnet4_params import COMPONENTS, LAYER_FIELDS

log = logging.getLogger(__name__)

DFN3_GRU = PRESETS["dfnet4-dfn3conv-gru"]  # DFN3's backbones: GRU, 1 / 2 / 2 layers


def assemble(student: DfNet4, dfn3, from_dfn3: set[str]) -> DfNet4:
    """A model with the components in ``from_dfn3`` taken from DFN3 and the others from ``student``."""
    unknown = from_dfn3 - set(COMPONENTS)
    if unknown:
        raise ConfigError(f"unknown components {sorted(unknown)}; expected some of {COMPONENTS}")
    changes = {}
    for c in from_dfn3:
        changes[f"{c}_backbone"] = "gru"
        changes[LAYER_FIELDS[c]] = getattr(DFN3_GRU, LAYER_FIELDS[c])
    model = DfNet4(replace(student.params, **changes))
    report = init_from_dfn3(model, dfn3)
    fresh = [n for n in report.untouched if n.split(".")[0] in from_dfn3]
    if fresh:  # a component "from DFN3" that DFN3's weights do not fill would be a fresh one
        raise ConfigError(f"DFN3's weights do not fill {len(fresh)} tensors of {sorted(from_dfn3)} at this "
                          f"student's widths (e.g. {', '.join(fresh[:3])}); skipped: "
                          + "; ".join(f"{n}: {why}" for n, why in report.skipped[:3]))
    take_components(model, student, [c for c in COMPONENTS if c not in from_dfn3])
    return model.eval()


def label(from_dfn3: set[str]) -> str:
    """'enc=DFN3 erb_dec=student df_dec=DFN3'."""
    return " ".join(f"{c}={'DFN3' if c in from_dfn3 else 'student'}" for c in COMPONENTS)


def main(argv: list[str] | None = None) -> int:
    from dfnet4_sdk.training.learning_curve import HeldOut

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("student", help="a trained DfNet4 checkpoint at DFN3's widths (e.g. dfnet4-dfn3conv)")
    ap.add_argument("--data-root", default="../shared/data", help="holds noisy_real/ and dev_eval/ears/")
    ap.add_argument("--dfn3", default="dfn3")
    ap.add_argument("--json", help="also write the scores here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(args.data_root)
    if not (data / "noisy_real").is_dir() or not (data / "dev_eval" / "ears").is_dir():
        raise SystemExit(f"error: {data} has no noisy_real/ and dev_eval/ears/ (the held-out sets); pass --data-root")
    student, dfn3 = load_model(args.student), load_model(args.dfn3)
    if not isinstance(student, DfNet4):
        raise SystemExit(f"error: {args.student} is a {type(student).__name__}, not a DfNet4 student")
    try:  # every assembly's shapes, before minutes of scoring
        assemblies = [{c for c, pick in zip(COMPONENTS, picks) if pick}
                      for picks in itertools.product((False, True), repeat=len(COMPONENTS))]
        models = [assemble(student, dfn3, from_dfn3) for from_dfn3 in assemblies]
    except ConfigError as e:
        raise SystemExit(f"error: {args.student} does not splice with DFN3 (a dfnet4-dfn3conv* student does):\n{e}") from None
    held = HeldOut(data)
    rows = []
    print("| enc | erb_dec | df_dec | OVRL noisy_real | PESQ EARS | OVRL EARS |\n|---|---|---|---|---|---|")
    for from_dfn3, model in zip(assemblies, models):
        scores = held.score(model)
        rows.append({"from_dfn3": sorted(from_dfn3), "label": label(from_dfn3), **scores})
        cells = ["DFN3" if c in from_dfn3 else "student" for c in COMPONENTS]
        print(f"| {' | '.join(cells)} | {scores['ovrl_noisy_real']:.3f} | {scores['pesq_ears']:.3f} | "
              f"{scores['ovrl_ears']:.3f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"student": args.student, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
