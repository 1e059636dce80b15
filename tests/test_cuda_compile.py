"""Every CUDA C source in kernels/ compiles with nvcc for sm_80 and sm_90: no errors, no warnings,
no register spills (read from ``-Xptxas -v``); and with NVRTC, the compiler CuPy runs at run time,
with the options CuPy will give it. CI has nvcc and NVRTC but no GPU, so this is how the .cu files
are checked there; scripts/gpu_suite.sh runs them for real. The PTX checks below read the code
of both compilers."""

import re
import shutil
import subprocess

import pytest
from _nvrtc import CUPY_APPENDS, Nvrtc
from minimaskrcnn.kernels import _cupy_loader, cuda_sources

# Needs the CUDA toolkit; a machine without it deselects these by name (README), never silently.
pytestmark = pytest.mark.cuda_toolkit

ARCHS = ["sm_80", "sm_90"]
SOURCES = cuda_sources()


def test_nvcc_is_installed():
    assert shutil.which("nvcc"), (
        "nvcc is needed to check the CUDA C kernels (it is on the CI machine)"
    )


def test_there_are_cuda_sources():
    assert SOURCES, "kernels/ should ship .cu files"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_cu_compiles_without_warnings_or_spills(src, arch, tmp_path):
    cmd = [
        "nvcc",
        "-std=c++17",
        f"-arch={arch}",
        "-cubin",
        "-Xptxas",
        "-v",
        "-Werror",
        "all-warnings",
        "-o",
        str(tmp_path / (src.stem + ".cubin")),
        str(src),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed on {src.name} for {arch}:\n{log}"
    assert "warning" not in log.lower(), f"nvcc warned on {src.name} for {arch}:\n{log}"
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    assert spills, f"no ptxas -v report for {src.name}:\n{log}"
    assert max(spills) == 0, f"{src.name} spills registers on {arch}:\n{log}"


@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_static_shared_memory_fits_a_block(src, tmp_path):
    """A kernel with more than 48 KB of static __shared__ memory cannot be launched at all (more
    needs dynamic shared memory and an opt-in); the emulator in tests/_cuda_emu.py does not model
    it, so it is checked here from ptxas's report."""
    log = subprocess.run(
        ["nvcc", "-std=c++17", "-arch=sm_80", "-cubin", "-Xptxas", "-v",
         "-o", str(tmp_path / "k.cubin"), str(src)],
        capture_output=True, text=True,
    )
    text = log.stdout + log.stderr
    assert log.returncode == 0, text
    assert re.search(r"Used \d+ registers", text), f"no ptxas -v report for {src.name}:\n{text}"
    smem = [int(n) for n in re.findall(r"(\d+) bytes smem", text)] or [0]  # none: no line
    assert max(smem) <= 48 * 1024, f"{src.name}: {max(smem)} bytes of static shared memory"


@pytest.fixture(scope="module")
def nvrtc():
    return Nvrtc()


def nvrtc_options(arch):
    """What cupy.RawModule gives NVRTC for our sources on a GPU of ``arch`` (sm_XX)."""
    return [*_cupy_loader.OPTIONS, *CUPY_APPENDS, f"-arch=compute_{arch[3:]}"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_cu_compiles_with_nvrtc_as_cupy_compiles_it(src, arch, nvrtc):
    """nvcc compiles a .cu file as C++ with the host's headers at hand; NVRTC has no host
    compiler and no system headers, so a source that nvcc accepts can still fail in CuPy."""
    rc, log, ptx = nvrtc.compile(src.read_text(), src.name, nvrtc_options(arch))
    assert rc == 0, f"NVRTC {nvrtc.version()} failed on {src.name} for {arch}:\n{log}"
    assert "warning" not in log.lower(), f"NVRTC warned on {src.name} for {arch}:\n{log}"
    names = re.findall(r'extern "C" __global__ void(?: __launch_bounds__\(\d+\))?\s+(\w+)',
                       src.read_text())
    assert names, src.name
    for name in names:  # extern "C": the names CuPy's get_function looks up, unmangled
        assert re.search(r"\.entry " + name + r"\(", ptx), f"{src.name}: no entry {name}"


def _ptx(src, compiler, nvrtc, tmp_path):
    """The sm_90 PTX of ``src`` from nvcc, or from NVRTC with CuPy's options."""
    if compiler == "nvrtc":
        rc, log, ptx = nvrtc.compile(src.read_text(), src.name, nvrtc_options("sm_90"))
        assert rc == 0, log
        return ptx
    ptx_path = tmp_path / (src.stem + ".ptx")
    proc = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-ptx", "-o", str(ptx_path),
                           str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ptx_path.read_text()


@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
def test_roi_align_coordinates_are_not_fused(compiler, nvrtc, tmp_path):
    """nvcc (and NVRTC, which CuPy uses) contract ``y1 + ph * bin_h`` into an FMA by default, which
    moves a sample by an ulp and the value beyond the tolerance against the CPU spec; the emulator
    compiles without contraction, so only the PTX can show it. The backward kernels have no other
    multiply-add than those coordinates (their gradients go to atomicAdd), so they hold none; the
    forwards keep only the FMAs of their bilinear sums: with nvcc 13.0, 9 in version 1's forward
    and 30 in version 2's (11 and 34 with the coordinates fused), so one coordinate fused again
    fails; a compiler that fuses less passes."""
    src = next(s for s in SOURCES if s.name == "roi_align.cu")
    ptx = _ptx(src, compiler, nvrtc, tmp_path)

    def body(name):
        m = re.search(r"\.entry " + name + r"\((.*?)\n}\n", ptx, re.S)
        assert m, f"no entry {name} in the PTX"
        return m.group(1)

    for t in ("f32", "f64"):
        assert body(f"roi_align_backward_{t}").count("fma.rn.") == 0, t
        assert body(f"roi_align_forward_{t}").count("fma.rn.") <= 9, t
        assert body(f"roi_align_forward_v2_{t}").count("fma.rn.") <= 30, t


@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
def test_sgd_step_is_not_fused(compiler, nvrtc, tmp_path):
    """The SGD step's products and sums are rounded one by one, as NumPy's (the emulator's test
    compares with the reference bit for bit, but it compiles without contraction, so only the
    PTX can show a fused one): no FMA at all, and the five products of the rule (weight decay,
    the buffer's two, nesterov's, the update) are there as rounded multiplies (the compiler may
    copy the loop body once per branch, so there can be more)."""
    src = next(s for s in SOURCES if s.name == "sgd.cu")
    ptx = _ptx(src, compiler, nvrtc, tmp_path)
    for t in ("f32", "f64"):
        m = re.search(r"\.entry sgd_step_" + t + r"\((.*?)\n}\n", ptx, re.S)
        assert m, f"no entry sgd_step_{t} in the PTX"
        body = m.group(1)
        assert "fma." not in body, t
        assert len(re.findall(r"\bmul\.rn\.(?:ftz\.)?" + t + r"\b", body)) >= 5, t


def _main_loop(ptx, entry):
    """The lines of ``entry``'s loop that holds the most f32 FMAs (a loop: a label and a later
    branch back to it)."""
    m = re.search(r"\.entry " + entry + r"\((.*?)\n}\n", ptx, re.S)
    assert m, f"no entry {entry} in the PTX"
    lines = m.group(1).splitlines()
    labels, best = {}, (0, [])
    for i, line in enumerate(lines):
        lab = re.match(r"\s*(\$L__\w+):", line)
        if lab:
            labels[lab.group(1)] = i
        back = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if back and back.group(1) in labels:
            seg = lines[labels[back.group(1)] : i + 1]
            fmas = sum(bool(re.search(r"\bfma\.rn\.(?:ftz\.)?f32\b", s)) for s in seg)
            best = max(best, (fmas, seg), key=lambda t: t[0])
    return best


@pytest.mark.parametrize("compiler", ["nvcc", "nvrtc"])
@pytest.mark.parametrize("bm", [128, 64])
def test_conv_regtiled_k_loop_divides_once_per_step(bm, compiler, nvrtc, tmp_path):
    """Version 4's k loop: BK * TM * TN multiply-adds per step (the 8 k values unrolled), and the
    index arithmetic of the gathers done once per k step, not once per value. A gather that
    splits its k itself divides twice per value: 8 divisions per step in the forward (24 in
    grad_input, 11 in grad_weight), which with nvcc 13.0 made the forward's loop hold 454
    instructions besides its 512 FFMAs (sm_90 SASS) against 195 now. Allowed per step: FWD 2
    (k into s, kh, kw), WGRAD 3 (r into image, row, column; A's r once more), DGRAD 2 + 2 per
    gathered value (a stride > 1 asks which grad_out element reaches a pixel: 4 values)."""
    src = next(s for s in SOURCES if s.name == "conv.cu")
    ptx = _ptx(src, compiler, nvrtc, tmp_path)
    for mode, divides in (("fwd", 2), ("wgrad", 3), ("dgrad", 2 + 2 * 4)):
        fmas, loop = _main_loop(ptx, f"conv_{mode}_regtiled{bm}")
        assert fmas == 8 * (bm // 16) * 8, (mode, fmas)
        n = sum(bool(re.search(r"\b(?:div|rem)\.[su]32\b", s)) for s in loop)
        assert n <= divides, f"{mode}: {n} integer divisions in the k loop (at most {divides})"
