#!/usr/bin/env bash
# Everything a session with a CUDA machine checks, in one command that fits one device call
# (about 7 minutes on an H200 by bench_gpu's sizing; the tests are cut at 150 s and the
# benchmark starts no new part after 330 s; run it from the repository root):
#   1. the CUDA cases of the device-dependent tests (`pytest -k cuda`: the hand-written SAE
#      backward and InstanceAdam on the GPU, K steps per call = 1, resident = streamed data,
#      precision settings, scoring on the GPU = on the CPU), about a minute;
#   2. bench/bench_gpu.py (the real commands against a bare-loop roof), budgeted to what is left.
# Results go to DIR (default $OUT, the device tool's folder): cuda_tests.log, gpu_bench.md/.json,
# bench.log. The tests' failures are reported, not fatal: the benchmark still runs.
#
#   bash bench/gpu_session.sh [DIR]          # on the CUDA machine
#   bash bench/gpu_session.sh DIR --cpu      # check the script here: CPU cases, tiny sizes
# (PYTHON picks the interpreter; python3 by default.)
set -u -o pipefail
out=${1:-${OUT:?give a folder or set OUT}}
mode=${2:-}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ "$mode" = "--cpu" ]; then
    select=cpu
    bench=(--device cpu --tiny --budget-s 240)
else
    select=cuda
    bench=(--budget-s 330)
fi
tests=(tests/test_engine.py tests/test_sae_backward.py tests/test_sae_data.py tests/test_eval_device.py)
start=$(date +%s)
timeout 150 "$py" -m pytest -q -p no:cacheprovider -k "$select" "${tests[@]}" 2>&1 |
    tee "$out/cuda_tests.log"
tests_rc=$?
echo "tests: exit $tests_rc after $(($(date +%s) - start)) s"
"$py" bench/bench_gpu.py --out "$out" "${bench[@]}" 2>&1 | tee "$out/bench.log"
bench_rc=$?
echo "tests exit $tests_rc, benchmark exit $bench_rc, $(($(date +%s) - start)) s in all"
exit $((tests_rc || bench_rc))
