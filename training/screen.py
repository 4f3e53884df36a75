"""Screen clean-speech corpora with DNSMOS before they become training targets.

Some LibriSpeech files were cut from low-bitrate MP3 audiobooks and keep faint MP3 artefacts or
a noise floor; as supervised targets they would teach the model to keep that noise. Each file is
scored once with DNSMOS P.835 (``dfnet4_sdk.evaluation.dnsmos``) and the scores are committed:

    python -m dfnet4_sdk.training.screen --data-root ../shared/data \\
        --out training/configs/speech_screen.csv          # path,sig,bak,ovrl,p808

``build_lists`` then drops every listed file whose OVRL is below ``[data] min_screen_ovrl``
(files not in the list are kept: only the screened corpora are filtered). Paths are relative to
the data root, so the list holds on any machine.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from dfnet4_sdk.errors import ConfigError

log = logging.getLogger(__name__)

SCREENED_FOLDERS = ("speech/librispeech/", "speech/thorsten/", "speech/ljspeech/")
COLUMNS = ("path", "sig", "bak", "ovrl", "p808")
DEFAULT_SCREEN = Path(__file__).resolve().parent / "configs" / "speech_screen.csv"


def score_files(data_root: str | Path, folders: tuple[str, ...] = SCREENED_FOLDERS) -> list[dict[str, object]]:
    """DNSMOS of every speech file of ``folders`` listed in ``<data_root>/manifest.csv``."""
    import soundfile as sf

    from dfnet4_sdk.evaluation import dnsmos

    root = Path(data_root)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise ConfigError(f"{manifest} does not exist; pass the folder that holds manifest.csv as --data-root")
    with manifest.open(newline="") as f:
        paths = [r["path"] for r in csv.DictReader(f) if r["kind"] == "speech" and r["path"].startswith(folders)]
    rows = []
    for i, rel in enumerate(sorted(paths)):
        audio, rate = sf.read(str(root / rel), dtype="float32", always_2d=True)
        scores = dnsmos(audio.mean(axis=1), rate)
        rows.append({"path": rel, **{k: round(scores[k], 3) for k in COLUMNS[1:]}})
        if (i + 1) % 50 == 0:
            log.info("scored %d / %d", i + 1, len(paths))
    return rows


def write_screen(rows: list[dict[str, object]], path: str | Path) -> None:
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)


def load_screen(path: str | Path) -> dict[str, dict[str, float]]:
    """{relative path: {sig, bak, ovrl, p808}} from a screen list."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"speech screen list {path} does not exist; write it with python -m dfnet4_sdk.training.screen")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = sorted(set(COLUMNS) - set(reader.fieldnames or ()))
        if missing:
            raise ConfigError(f"{path} lacks the columns {missing}; expected {list(COLUMNS)}")
        return {r["path"]: {k: float(r[k]) for k in COLUMNS[1:]} for r in reader}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", default=str(DEFAULT_SCREEN))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = score_files(args.data_root)
    write_screen(rows, args.out)
    log.info("wrote %d rows to %s", len(rows), args.out)


if __name__ == "__main__":
    main()
