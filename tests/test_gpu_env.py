"""runtime.model.gpu_env and the install matrix: one ONNX Runtime build, reasons that name the real
cause, ``auto`` falling back with a logged reason. Runs on CPU machines (the GPU cases are
stood in for by fake packages on sys.path); skips what a real GPU stack here would change."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers_export import shared_export

from runtime.errors import S2IError
from runtime.model import backends, gpu_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_export(tmp_path_factory, embedding_dim=32, input_sensitive=True)


def test_extras_keep_one_onnxruntime_build_and_trt_brings_cuda_python() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split(">")[0].split("[")[0].split("=")[0].strip()
             for d in project["dependencies"]]
    assert not [n for n in names if n.startswith("onnxruntime")], names
    extras = project["optional-dependencies"]
    assert extras["cpu"][0].startswith("onnxruntime>")
    for gpu in ("gpu", "gpu-cu12"):
        assert extras[gpu][0].startswith("onnxruntime-gpu[cuda,cudnn]")
    for trt, major in (("trt", 13), ("trt-cu12", 12)):
        assert extras[trt][0].startswith(f"tensorrt-cu{major}")
        assert any(d.startswith("cuda-python") and f"<{major + 1}" in d for d in extras[trt])
    # no extra pulls a second build in through another one
    for name, deps in extras.items():
        builds = {d.split("[")[0].split(">")[0] for d in deps if d.startswith("onnxruntime")}
        assert len(builds) <= 1, name
    assert "[cpu," in (ROOT / ".ci" / "setup.sh").read_text()


def test_both_builds_installed_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"}
    monkeypatch.setattr(gpu_env, "distribution_version", versions.get)
    conflict = gpu_env.onnxruntime_conflict()
    assert conflict and "onnxruntime 1.32.0 and onnxruntime-gpu 1.31.1" in conflict
    assert gpu_env.ORT_FIX in conflict and "\n" not in conflict

    class CpuOnly:
        __version__ = "1.32.0"

        @staticmethod
        def get_available_providers() -> list[str]:
            return ["CPUExecutionProvider"]

    assert gpu_env.cuda_provider_reason(CpuOnly) == conflict
    monkeypatch.setattr(gpu_env, "distribution_version", {"onnxruntime": "1.32.0"}.get)
    reason = gpu_env.cuda_provider_reason(CpuOnly)
    assert "CPU build" in reason and "'.[gpu]'" in reason


def test_preload_dlls_is_called_once_and_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class GpuOrt:
        __version__ = "1.31.1"

        @staticmethod
        def get_available_providers() -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        @staticmethod
        def preload_dlls() -> None:
            calls.append(1)
            raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(gpu_env, "_preloaded", {})
    reason = gpu_env.preload_cuda_libraries(GpuOrt)
    assert reason and "OSError: libcudnn.so.9" in reason
    assert gpu_env.preload_cuda_libraries(GpuOrt) == reason and calls == [1]


def _fake_package(root: Path, name: str, body: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(textwrap.dedent(body))


@pytest.fixture()
def no_real_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "tensorrt" or m.startswith("tensorrt.")]:
            monkeypatch.delitem(sys.modules, name)
        return
    pytest.skip("a real TensorRT is installed here; the fake-package cases would not apply")


def test_tensorrt_reason_names_the_real_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              no_real_tensorrt: None) -> None:
    assert "not installed" in gpu_env.tensorrt_unavailable_reason()
    # installed, but its libraries do not load (e.g. built for another CUDA major)
    broken = tmp_path / "broken"
    _fake_package(broken, "tensorrt", """
        raise ImportError("libcudart.so.13: cannot open shared object file: No such file")
    """)
    monkeypatch.syspath_prepend(str(broken))
    reason = gpu_env.tensorrt_unavailable_reason()
    assert "installed but cannot load" in reason and "libcudart.so.13" in reason
    assert "not installed" not in reason and "\n" not in reason
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    # it loads, but cuda-python (device buffers) is missing: that is the reason given
    working = tmp_path / "working"
    _fake_package(working, "tensorrt", "__version__ = '11.4.0'\n")
    monkeypatch.syspath_prepend(str(working))
    monkeypatch.setattr(gpu_env, "_cudart", _raise_import_error)
    reason = gpu_env.tensorrt_unavailable_reason()
    assert reason.startswith("cuda-python is not installed") and "'.[trt]'" in reason
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)


def _raise_import_error() -> None:
    raise ImportError("No module named 'cuda'")


def test_mismatch_hint_compares_cuda_majors(monkeypatch: pytest.MonkeyPatch) -> None:
    versions = {"tensorrt-cu13": "11.4.0.106", "cuda-bindings": "13.4.4"}
    monkeypatch.setattr(gpu_env, "distribution_version", versions.get)
    hint = gpu_env._mismatch("12.8")
    assert "TensorRT is built for CUDA 13 but the driver supports CUDA 12.8" in hint
    assert "cuda-python>=12.6,<13" in hint
    assert "no NVIDIA driver" in gpu_env._mismatch(None)


def test_auto_falls_back_when_cuda_is_listed_but_cannot_load(
        export_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ort = backends._ort()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a real CUDA provider is listed here")
    listed = ["CUDAExecutionProvider", *ort.get_available_providers()]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    monkeypatch.setattr(gpu_env, "_preloaded", {})
    translator = backends.open_translator(export_dir)
    assert translator.backend == "onnxruntime-cpu"
    assert len(translator.fallbacks) == 1
    assert translator.fallbacks[0].startswith("onnxruntime-cuda: ONNX Runtime could not use "
                                              "CUDAExecutionProvider")
    logged = capsys.readouterr().err
    assert "auto: onnxruntime-cuda failed to load, falling back to onnxruntime-cpu" in logged
    with pytest.raises(S2IError, match="CUDA/cuDNN libraries did not load") as info:
        backends.open_translator(export_dir, "onnxruntime-cuda")
    assert "\n" not in str(info.value)


def test_without_onnxruntime_runtime_imports_and_says_which_extra(export_dir: Path) -> None:
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from runtime.model.backends import open_translator\n"
            "from runtime.errors import S2IError\n"
            "try:\n"
            f"    open_translator({str(export_dir)!r}, 'onnxruntime-cpu')\n"
            "except S2IError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert "ONNX Runtime is not installed" in out and "'.[cpu]'" in out


def test_wheel_parts_split_and_join_back(tmp_path: Path) -> None:
    """scripts/gpu_wheels.sh cuts wheels for size-limited transfers and checks them back."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    data = np.random.default_rng(0).bytes(int(2.5 * 2**20))
    (wheels / "big-1.0-py3-none-any.whl").write_bytes(data)
    (wheels / "small-1.0-py3-none-any.whl").write_bytes(b"small")
    script = str(ROOT / "scripts" / "gpu_wheels.sh")
    subprocess.run(["bash", "-c", f"cd {wheels} && sha256sum ./*.whl > SHA256SUMS"],
                   check=True)
    subprocess.run(["bash", script, "split", str(wheels), "1"], check=True,
                   capture_output=True)
    parts = sorted(p.name for p in wheels.glob("big-*.part.*"))
    assert len(parts) == 3 and not (wheels / "big-1.0-py3-none-any.whl").exists()
    assert (wheels / "small-1.0-py3-none-any.whl").exists()
    done = subprocess.run(["bash", script, "join", str(wheels)], check=True,
                          capture_output=True, text=True)
    assert (wheels / "big-1.0-py3-none-any.whl").read_bytes() == data
    assert done.stdout.count(": OK") == 2
