"""`cyseg export --onnx`: the ONNX graph gives the torch model's probabilities, carries what a user
needs in its metadata, and a foreign file is one line with nothing written."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import invoke

from unet import load_segmenter


def test_the_onnx_export_matches_the_torch_model(tiny_model, ihc_image, tmp_path):
    out = tmp_path / "tiny.onnx"
    result = invoke(["export", tiny_model, "--onnx", out])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime matches torch within" in result.stdout
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == ["cell"] and int(meta["size_multiple"]) > 1
    seg = load_segmenter(tiny_model, device="cpu")
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for h, w in ((160, 192), (96, 320)):  # any size that is a multiple of the network's
        image = ihc_image[:h, :w]
        got = session.run(None, {"image": image.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        expected = seg.predict(image, amp=False, tile=512).cpu().numpy()
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-3


def test_exporting_a_foreign_file_is_one_line(tmp_path):
    (tmp_path / "notes.pt").write_text("not a model")
    result = invoke(["export", tmp_path / "notes.pt", "--onnx", tmp_path / "x.onnx"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "notes.pt" in result.stderr
    assert not list(tmp_path.glob("*.onnx*"))


@pytest.mark.parametrize("missing", ["onnxruntime"])
def test_export_without_onnx_runtime_names_the_extra(tiny_model, tmp_path, monkeypatch, missing):
    import builtins

    real_import = builtins.__import__

    def no_runtime(name, *args, **kwargs):
        if name == missing:
            raise ImportError(name=missing)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_runtime)
    result = invoke(["export", tiny_model, "--onnx", tmp_path / "x.onnx"])
    assert result.exit_code == 2 and "pip install 'cyseg[export]'" in result.stderr
    assert not list(tmp_path.glob("*.onnx*"))
