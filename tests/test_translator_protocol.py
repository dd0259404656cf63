"""Every translator conforms to ``runtime.model.translator.Translator`` (the one batched call the
serving pipeline uses), and the pipeline's images through it are those of the two-call path it
replaced, bit for bit for the same seed."""

from __future__ import annotations

import ast
import inspect
import textwrap
import typing

import numpy as np
import pytest
from helpers_runtime import tiny_export

from runtime.model.translator import EncoderGenerator, Translator

RATE = 16000


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def implementations() -> list[type]:
    from benchmarks.standin_serve import ConstantTimeModel
    from runtime.cluster.client import ClusterTranslator
    from runtime.model.backends import LocalTranslator

    found = [LocalTranslator, ClusterTranslator, ConstantTimeModel]
    try:
        from benchmarks.eager import EagerTranslator
    except ImportError:     # torch is absent: the runtime-only install
        return found
    return [*found, EagerTranslator]


def protocol_members() -> tuple[dict[str, inspect.Signature], set[str]]:
    """The Protocol's methods (name -> signature) and data members."""
    methods = {name: inspect.signature(getattr(Translator, name))
               for name, value in vars(Translator).items()
               if callable(value) and not name.startswith("_")}
    return methods, set(typing.get_type_hints(Translator))


def assigned_attributes(cls: type) -> set[str]:
    """Names a class (or a base up to object) gives its instances: class-level names and
    annotations, and every ``self.NAME = ...`` target in its methods' source."""
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:
        names |= set(vars(klass)) | set(getattr(klass, "__annotations__", {}))
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) \
                            and leaf.value.id == "self":
                        names.add(leaf.attr)
    return names


def shape(signature: inspect.Signature) -> list[tuple[str, object, bool]]:
    """Parameter names, kinds and whether each has a default, without ``self``."""
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty)
            for p in signature.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("cls", implementations(), ids=lambda c: c.__name__)
def test_every_translator_has_the_protocols_members_and_signatures(cls):
    methods, data = protocol_members()
    assert set(methods) == {"translate_batch", "close"} and \
        data == {"manifest", "dropout", "backend", "features"}
    for name, want in methods.items():
        got = inspect.signature(getattr(cls, name))
        assert shape(got) == shape(want), f"{cls.__name__}.{name}{got} is not {want}"
    missing = data - assigned_attributes(cls)
    assert not missing, f"{cls.__name__} never sets {sorted(missing)}"


def windows(front_end) -> np.ndarray:
    t = np.arange(front_end.n_samples) / front_end.sample_rate
    tones = [0.5 * np.sin(2 * np.pi * f * t) for f in (220, 1500, 5000)]
    return np.asarray(tones, np.float32)


def test_the_local_translator_conforms_and_its_pipeline_images_are_the_two_call_path(export):
    """The images of ``Pipeline.process_batch`` (one ``translate_batch``) equal, bit for bit,
    those of encoder + generator called by hand with the same seed's masks (the path the
    pipeline took before the Protocol), for both front-end placements."""
    from runtime.frontend import FrontEndConfig, log_mel_batch
    from runtime.model.backends import open_translator
    from runtime.model.masks import draw_masks
    from runtime.serve.pipeline import Pipeline, Window
    from runtime.wire.protocol import images_to_uint8

    k, seed = 2, 11
    for features in ("graph", "host"):
        translator = open_translator(export, backend="onnxruntime-cpu", features=features)
        assert isinstance(translator, Translator) and translator.features == features
        front_end = FrontEndConfig.from_dict(translator.manifest["front_end"])
        audio = windows(front_end)
        results = Pipeline(translator, samples=k, seed=seed).process_batch(
            [Window(f"s{i}", a, 100.0 + i) for i, a in enumerate(audio)])
        inputs = audio if features == "graph" else log_mel_batch(audio, front_end)[:, None]
        encode = translator.encode_audio if features == "graph" else translator.encode
        masks = draw_masks(translator.dropout, len(audio) * k, np.random.default_rng(seed))
        want = images_to_uint8(translator.generate(np.repeat(encode(inputs), k, axis=0), masks))
        for i, result in enumerate(results):
            np.testing.assert_array_equal(result.images, want[i * k:(i + 1) * k])
            assert set(result.header["timings_ms"]) == {"features", "encoder", "generator"}
        assert np.abs(want[0].astype(int) - want[k].astype(int)).mean() > 5   # input-sensitive


def test_the_standin_and_eager_models_conform(export):
    from benchmarks.standin_serve import ConstantTimeModel
    from runtime.frontend import FrontEndConfig, log_mel_batch
    from runtime.model.backends import open_translator
    from runtime.model.masks import draw_masks

    local = open_translator(export, backend="onnxruntime-cpu", features="host")
    standin = ConstantTimeModel(local, 0.0, windows=3)
    assert isinstance(standin, Translator)
    images, timings = standin.translate_batch(np.zeros((2, 1, 128, 100), np.float32), [], 2)
    np.testing.assert_array_equal(images, standin.images[[0, 1, 2, 0]])
    assert set(timings) == {"encoder", "generator"}

    eager_module = pytest.importorskip("benchmarks.eager", reason="torch is not installed")
    eager = eager_module.EagerTranslator.from_checkpoint(f"{export}.ckpt.pt", local.manifest)
    assert isinstance(eager, Translator) and isinstance(eager, EncoderGenerator)
    front_end = FrontEndConfig.from_dict(local.manifest["front_end"])
    spec = log_mel_batch(windows(front_end), front_end)[:, None]
    masks = draw_masks(eager.dropout, len(spec) * 2, np.random.default_rng(0))
    got, _ = eager.translate_batch(spec, masks, 2)
    np.testing.assert_array_equal(got, eager.generate(np.repeat(eager.encode(spec), 2, 0), masks))
    np.testing.assert_allclose(got, local.translate_batch(spec, masks, 2)[0], atol=2e-3)
