#!/usr/bin/env bash
# Everything a session with a CUDA machine checks, in one command that fits one device call
# (about 8 minutes on an H200 by bench_gpu's sizing; the tests are cut at 150 s, the two
# benchmark runs start no new part after 270 s and 60 s; run it from the repository root):
#   1. the CUDA cases of the device-dependent tests (`pytest -k cuda`: the hand-written SAE
#      backward and InstanceAdam on the GPU, K steps per call = 1, resident = streamed data,
#      precision settings, CUDA graphs = none, scoring on the GPU = on the CPU), ~1-2 minutes;
#   2. bench/bench_gpu.py (the real commands against a bare-loop roof);
#   3. its toy part again with runtime.cuda_graphs on (into DIR/cuda_graphs).
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
    graphs=(--device cpu --tiny --budget-s 60)
else
    select=cuda
    bench=(--budget-s 270)
    graphs=(--budget-s 60)
fi
tests=(tests/test_graphs.py tests/test_engine.py tests/test_sae_backward.py tests/test_sae_data.py
    tests/test_eval_device.py)
start=$(date +%s)
timeout 150 "$py" -m pytest -q -p no:cacheprovider -k "$select" "${tests[@]}" 2>&1 |
    tee "$out/cuda_tests.log"
tests_rc=$?
echo "tests: exit $tests_rc after $(($(date +%s) - start)) s"
"$py" bench/bench_gpu.py --out "$out" "${bench[@]}" 2>&1 | tee "$out/bench.log"
bench_rc=$?
# runtime.cuda_graphs (off by default until measured): the toy sweep again with it on (the
# launch-bound case; a failed capture shows as a failed row).
mkdir -p "$out/cuda_graphs"
"$py" bench/bench_gpu.py --out "$out/cuda_graphs" "${graphs[@]}" --parts toy \
    --extra-set runtime.cuda_graphs=true 2>&1 | tee "$out/cuda_graphs/bench.log"
bench_rc=$((bench_rc || $?))
echo "tests exit $tests_rc, benchmark exit $bench_rc, $(($(date +%s) - start)) s in all"
exit $((tests_rc || bench_rc))
