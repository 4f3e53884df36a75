#!/usr/bin/env bash
# Bounded training chunks on a lent GPU machine (issue 13 item 5), run from the repository root
# there with the packed data in .devdata/ and the wheels the machine lacks in .whl/ (see
# training/configs/dfnet4_dfn3conv_gpu.toml for how both are made):
#
#   bash training/remote_chunk.sh SECONDS [CONFIG ...]
#
# Several configs run side by side on the one GPU (a small student leaves most of it idle), each
# under runs/<config name>/ and comes back as $OUT/<config name>.tar (at most 8 files of 16 MiB
# come back from a call: the optimiser state stays there); one config keeps $OUT's top level.
# What travels (tracked files + carry) must stay under 64 MiB: with the 33 MB pack the shipped
# bundles and checkpoints in dfnet4_sdk/assets/ (41 MB, unused there: dfn3-tflite-fp16,
# dfnet4-lite-v1-onnx, dfnet4-mix-v1-tflite-fp16, dfnet4-mix-v1.pt) have to be moved aside for
# the call and back after it.
# DFSDK_DEVICE=cpu runs the same script here (a dry run of the tooling with tiny configs).
# DFSDK_SRC names the package source to install (default: this checkout; a clean `git archive` of
# a commit keeps a chunk independent of edits in progress).
# A 30-step probe measures seconds per step on this GPU first; the chunk then gets as many steps as
# fit in what is left of SECONDS, so its cosine learning-rate schedule ends when the chunk does.
# It stops by SIGTERM if it runs over (the trainer saves and exits). Everything comes back under
# $OUT: the chunk's weights as a dfnet4-sdk checkpoint, the optimiser state and the logs.
set -u
budget=${1:?seconds}
shift
configs=("${@:-training/configs/dfnet4_dfn3conv_gpu.toml}")
start=$(date +%s)
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then  # the wheels the GPU machine lacks (none for a dry run here)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e "${DFSDK_SRC:-.}" >/dev/null || exit 1
# DFSDK_PREPARE: a command run once the package is installed (e.g. making an init checkpoint
# there from what the tree has, instead of carrying it).
if [ -n "${DFSDK_PREPARE:-}" ]; then bash -c "$DFSDK_PREPARE" || exit 1; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

chunk() {  # chunk CONFIG RUN_DIR OUT_DIR
    local config=$1 runs=$2 out=$3
    mkdir -p "$out"
    distill() { python3 -m dfnet4_sdk.cli distill --config "$config" --device "${DFSDK_DEVICE:-cuda}" --no-resume "$@"; }
    distill --out "$runs/probe" --steps 30 >"$out/probe.log" 2>&1 || { tail -40 "$out/probe.log"; return 1; }
    local per_step left steps
    per_step=$(python3 -c "
import json; rows = [json.loads(l) for l in open('$runs/probe/log.jsonl')]
print(min(r['s_per_step'] for r in rows[1:]))")  # the first 10 steps include start-up
    left=$(( budget - ($(date +%s) - start) - 75 ))  # 75 s: the chunk's start-up, final save and copies
    steps=$(python3 -c "print(max(50, int($left / ($per_step * 1.08))))")
    echo "$config probe: $per_step s/step; chunk: $steps steps in about $left s"
    timeout -s TERM -k 30 "$left" bash -c "$(declare -f distill); config=$config; distill --out $runs/chunk --steps $steps" \
        >"$out/chunk.log" 2>&1
    echo "$config chunk exit status $?"; tail -5 "$out/chunk.log"
    cp "$runs/chunk/log.jsonl" "$runs/chunk/config.toml" "$out/"
    RUN="$runs/chunk" CHUNK_OUT="$out" python3 - <<'PY'
import json, os, torch
from dfnet4_sdk.models import load_checkpoint, save_checkpoint
run, out = os.environ["RUN"], os.environ["CHUNK_OUT"]
state = torch.load(f"{run}/state.pt", map_location="cpu", weights_only=False)
model = load_checkpoint(state["config"]["model"]["init_checkpoint"])
model.load_state_dict(state["model"])
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
save_checkpoint(model, f"{out}/chunk.pt", extra={"step": state["step"], "mode": state["mode"], "device": device})
torch.save({"step": state["step"], "optimizer": state["optimizer"]}, f"{out}/optimizer.pt")
with open(f"{out}/chunk.json", "w") as f:  # what `throughput --chunks` tabulates
    json.dump({"step": state["step"], "mode": state["mode"], "device": device}, f)
print(out, "saved chunk.pt at step", state["step"])
PY
}

if [ ${#configs[@]} -eq 1 ]; then
    chunk "${configs[0]}" runs "$OUT"
    exit $?
fi
status=0
for config in "${configs[@]}"; do
    name=$(basename "$config" .toml)
    chunk "$config" "runs/$name" "$OUT/$name" &
done
for job in $(jobs -p); do wait "$job" || status=1; done
for config in "${configs[@]}"; do
    name=$(basename "$config" .toml)
    tar -cf "$OUT/$name.tar" -C "$OUT" --exclude optimizer.pt "$name" && rm -rf "${OUT:?}/$name"
done
exit $status
