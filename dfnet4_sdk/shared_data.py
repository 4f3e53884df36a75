"""Where the project's audio sits: ``$DFNET4_SDK_DATA``, else ``../shared/data`` beside the checkout.

That folder is never packaged (its README: several licences forbid it), and a clone from a public
host has none. Tests that need it skip with a message naming it; the CLI commands that only need one
noisy clip fall back to the demo clip committed at ``examples/noisy_speech_48k.flac`` (in a source
checkout only: the wheel ships neither). Like ``user_cache``, this module imports nothing heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV_VAR = "DFNET4_SDK_DATA"
REQUIRE_ENV_VAR = "DFNET4_SDK_REQUIRE_DATA"  # set (to 1) where the data must be there: CI
# dfnet4_sdk/ sits at the top of a source checkout; in an installed wheel this is site-packages,
# beside which no data and no examples/ sit, so every lookup below finds nothing there.
CHECKOUT_ROOT = Path(__file__).resolve().parents[1]
DEMO_CLIP = CHECKOUT_ROOT / "examples" / "noisy_speech_48k.flac"  # made by the project, CC BY 4.0
NOISY_CLIP = "noisy_real/dns5_blind_street_48k.flac"  # the real noisy recording every benchmark reports on


def shared_data_dir() -> Path:
    """``$DFNET4_SDK_DATA`` when set, else ``../shared/data`` relative to the checkout."""
    value = os.environ.get(DATA_ENV_VAR)
    return Path(value).expanduser() if value else CHECKOUT_ROOT.parent / "shared" / "data"


def shared_data_present(root: Path | None = None) -> bool:
    """Whether the data folder is there at all: an absent or empty folder counts as missing (a bare
    clone); a folder with something in it is present, so a file missing inside it is an error."""
    root = shared_data_dir() if root is None else Path(root)
    return root.is_dir() and any(root.iterdir())


def shared_data_required() -> bool:
    """Whether a missing data folder is an error rather than a reason to skip (``$DFNET4_SDK_REQUIRE_DATA``)."""
    return os.environ.get(REQUIRE_ENV_VAR, "") not in ("", "0")


def missing_data_reason(root: Path | None = None) -> str:
    """Why something that needs the data folder cannot run (a test's skip reason)."""
    root = shared_data_dir() if root is None else root
    return f"needs the project's audio at {root} (../shared/data beside the repository; a bare clone has none)"


def default_noisy_clip(option: str = "--audio") -> Path:
    """Real noisy speech for conformance and benchmarks: the DNS5 street recording of the data
    folder, else the demo clip of the checkout; neither there raises AudioFileError naming ``option``."""
    for path in (shared_data_dir() / NOISY_CLIP, DEMO_CLIP):
        if path.is_file():
            return path
    from dfnet4_sdk.errors import AudioFileError

    raise AudioFileError(
        f"no default clip: neither {shared_data_dir() / NOISY_CLIP} (the project's audio, ../shared/data beside "
        f"a source checkout, or ${DATA_ENV_VAR}) nor the demo clip {DEMO_CLIP} exists; pass {option} with a "
        "noisy speech file"
    )
