"""Start a DfNet4-family student from what DeepFilterNet3 learned: copy every DFN3 tensor whose
name maps onto the student and whose shape matches.

    student = DfNet4.from_preset("dfnet4-dfn3conv")
    report = init_from_dfn3(student, load_model(args.dfn3))
    print(report.summary())   # what was copied, what was not and why

The ``dfnet4-dfn3conv*`` presets have DFN3's conv stacks, widths and groupings (``dfn3_layout``),
so their encoder and decoder convs, the encoder's DF linear, the local-SNR head, the backbones'
squeeze linears, the DF skip and the DF output head copy exactly; with the GRU backbone
(``dfnet4-dfn3conv-gru``) every tensor copies and the student starts equal to DFN3. Other
presets get whatever matches (usually nothing: the report says which shapes differ).

``python -m dfnet4_sdk.models.dfn3_init --preset dfnet4-dfn3conv -o init.pt`` writes an
initialised checkpoint for a training config's ``[model] init_checkpoint``. With
``--student CKPT --components enc erb_dec`` the named components then come whole from an already
trained student (``take_components``): e.g. a Mamba student's erb_dec with DFN3's GRU enc and
df_dec (``dfnet4-dfn3conv-mix``). Students distilled on DFN3's hidden states at the component
boundaries (``distill_hidden_names``) fit together without training.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import torch

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models.base import EnhancementModel

log = logging.getLogger(__name__)

# DFN3 name prefix -> DfNet4 name prefix; everything else keeps its name.
RENAMES = (
    ("enc.emb_gru.", "enc.backbone."),
    ("erb_dec.emb_gru.", "erb_dec.backbone."),
    ("df_dec.df_gru.", "df_dec.backbone."),
    ("df_dec.df_skip.", "df_dec.skip."),
    ("df_dec.df_convp.", "df_dec.convp."),
    ("df_dec.df_out.", "df_dec.head.heads.0."),
)
# DFN3 tensors that DFN3's own inference never uses, so no student has them.
UNUSED_BY_DFN3 = {"df_dec.df_fc_a.weight", "df_dec.df_fc_a.bias"}


@dataclass
class InitReport:
    """copied: (dfn3 name, student name); skipped: (dfn3 name, reason); untouched: student
    tensors DFN3 gave no value to (they keep their fresh initialisation)."""

    copied: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)

    def copied_values(self, state: dict[str, torch.Tensor]) -> int:
        return sum(state[s].numel() for _, s in self.copied)

    def summary(self) -> str:
        lines = [f"copied {len(self.copied)} DFN3 tensors; skipped {len(self.skipped)}; "
                 f"{len(self.untouched)} student tensors keep their fresh initialisation"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        lines += [f"  fresh   {name}" for name in self.untouched]
        return "\n".join(lines)


def student_name(dfn3_name: str) -> str:
    for old, new in RENAMES:
        if dfn3_name.startswith(old):
            return new + dfn3_name[len(old) :]
    return dfn3_name


@torch.no_grad()
def init_from_dfn3(student: EnhancementModel, dfn3: EnhancementModel) -> InitReport:
    """Copy DFN3's tensors into ``student`` in place wherever name and shape map; returns the report."""
    if student.dsp != dfn3.dsp:
        raise ConfigError(
            f"init_from_dfn3 needs the student's front-end to equal DFN3's; student has {student.dsp}, "
            f"DFN3 has {dfn3.dsp}: use a 48 kHz preset such as 'dfnet4-dfn3conv'"
        )
    target = student.state_dict()
    report = InitReport()
    problems: dict[str, str] = {}
    for name, value in dfn3.state_dict().items():
        dest = student_name(name)
        if name in UNUSED_BY_DFN3:
            problems[name] = "unused by DFN3's inference (upstream's DF alpha)"
        elif dest not in target:
            problems[name] = f"the student has no {dest!r} (a different backbone?)"
        elif target[dest].shape != value.shape:
            problems[name] = f"shape {tuple(value.shape)} != student {dest} {tuple(target[dest].shape)}"
    # A module copies whole or not at all: a bias without its weight means nothing.
    bad_modules = {name.rsplit(".", 1)[0] for name in problems}
    for name, value in dfn3.state_dict().items():
        if name in problems:
            report.skipped.append((name, problems[name]))
        elif name.rsplit(".", 1)[0] in bad_modules:
            report.skipped.append((name, "another tensor of its module does not map"))
        else:
            dest = student_name(name)
            target[dest].copy_(value)
            report.copied.append((name, dest))
    done = {dest for _, dest in report.copied}
    report.untouched = [n for n in target if n not in done]
    student.load_state_dict(target)
    return report


@torch.no_grad()
def take_components(model: EnhancementModel, source: EnhancementModel, components: list[str]) -> int:
    """Copy every tensor of ``components`` (top-level parts such as 'enc') from ``source`` into
    ``model`` in place; each must exist in ``source`` with the same shape. Returns the values copied."""
    target, given = model.state_dict(), source.state_dict()
    problems = []
    for c in components:
        names = [n for n in target if n.startswith(c + ".")]
        if not names:
            problems.append(f"the model has no component {c!r}; it has {sorted({n.split('.')[0] for n in target})}")
        for n in names:
            if n not in given:
                problems.append(f"{n}: not in the source (its {c} has a different structure)")
            elif given[n].shape != target[n].shape:
                problems.append(f"{n}: shape {tuple(given[n].shape)} in the source, {tuple(target[n].shape)} here")
    if problems:
        raise ConfigError(f"cannot take {components} from the source model:\n  " + "\n  ".join(problems))
    copied = 0
    for c in components:
        for n in target:
            if n.startswith(c + "."):
                target[n].copy_(given[n])
                copied += target[n].numel()
    model.load_state_dict(target)
    return copied


def main(argv: list[str] | None = None) -> int:
    from dfnet4_sdk.models import load_model, save_checkpoint
    from dfnet4_sdk.models.dfnet4 import DfNet4

    ap = argparse.ArgumentParser(description="Write a DfNet4 checkpoint initialised from DFN3's weights.")
    ap.add_argument("--preset", default="dfnet4-dfn3conv")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fresh (not copied) tensors")
    ap.add_argument("--dfn3", default="dfn3", help="DFN3's weights: 'dfn3' (the installed package) or the official archive")
    ap.add_argument("--student", help="a trained student checkpoint to take --components from, after DFN3")
    ap.add_argument("--components", nargs="+", default=[], help="components taken whole from --student (enc, erb_dec, df_dec)")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    if bool(args.student) != bool(args.components):
        ap.error("--student and --components go together")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    student = DfNet4.from_preset(args.preset)
    report = init_from_dfn3(student, load_model(args.dfn3))
    state = student.state_dict()
    extra = {"init": "dfn3", "copied_values": report.copied_values(state),
             "total_values": sum(v.numel() for v in state.values())}
    if args.student:
        taken = take_components(student, load_model(args.student), args.components)
        extra.update(student=args.student, student_components=args.components, student_values=taken)
        log.info("%s values of %s from %s", taken, args.components, args.student)
    save_checkpoint(student, args.output, extra=extra)
    log.info("%s\n%s of %s values from DFN3 -> %s", report.summary(), extra["copied_values"], extra["total_values"], args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
