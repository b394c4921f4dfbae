#!/usr/bin/env bash
# One call on the GPU machine: collect carried parts of onnxruntime-gpu, install what has
# arrived, expose the repository as `reaudio`, then run the given command (if any).
#
#   bash benchmarks/gpu/device_call.sh [COMMAND ...]
#
# Carried (ignored) paths it looks for: .whl/*.whl (small wheels: diffusers, usearch, ...),
# .ortparts/part-N and .ortparts/sha256 (onnxruntime-gpu as a split tar.xz, see README.md).
# State lives under /tmp on the machine, so parts carried by back-to-back calls add up
# while it stays warm.
set -u
mkdir -p /tmp/ortparts /tmp/site /tmp/ns/reaudio "${OUT:-/tmp/out}"
log="${OUT:-/tmp/out}/device_call.log"
{
    date -u
    for p in .ortparts/part-*; do [ -f "$p" ] && cp "$p" /tmp/ortparts/ && echo "received $p"; done
    [ -f .ortparts/sha256 ] && cp .ortparts/sha256 /tmp/ortparts/sha256
    ls -la /tmp/ortparts
    if compgen -G ".whl/*.whl" >/dev/null && [ ! -d /tmp/site/diffusers ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            && echo "installed small wheels"
    fi
    if [ ! -d /tmp/site/onnxruntime ] && [ -f /tmp/ortparts/sha256 ]; then
        have=$(cat /tmp/ortparts/part-* | sha256sum | cut -d' ' -f1)
        if [ "$have" = "$(cat /tmp/ortparts/sha256)" ]; then
            cat /tmp/ortparts/part-* | xz -dc | tar -x -C /tmp/site && echo "installed onnxruntime-gpu"
        else
            echo "onnxruntime-gpu parts incomplete ($(ls /tmp/ortparts | grep -c part-) so far)"
        fi
    fi
    for p in engine models training export; do ln -sfn "$PWD/$p" "/tmp/ns/reaudio/$p"; done
    purelib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    nvlibs=$(find "$purelib/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
    echo "nvidia libs: $nvlibs"
} 2>&1 | tee "$log"
purelib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export LD_LIBRARY_PATH="$(find "$purelib/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')${LD_LIBRARY_PATH:-}"
export PYTHONPATH="/tmp/site:/tmp/ns:$PWD" PYTHONUNBUFFERED=1
[ $# -gt 0 ] && "$@"
