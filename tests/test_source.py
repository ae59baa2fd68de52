"""The source reader: streaming reads, and clear errors for bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgeport.core.errors import SourceError
from edgeport.core.source import Source, iter_rows
from tests.conftest import copy_model


def test_reads_bf16_exactly_like_torch(gpt_oss_dir):
    src = Source.open(gpt_oss_dir)
    ref = load_file(gpt_oss_dir / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    assert np.array_equal(src.read_f32(name), ref[name].float().numpy())
    part = src.read_f32("model.embed_tokens.weight", slice(10, 20))
    assert np.array_equal(part, ref["model.embed_tokens.weight"][10:20].float().numpy())
    assert ref[name].dtype == torch.bfloat16


def test_row_chunks_cover_the_tensor_within_budget():
    chunks = list(iter_rows(1000, 4096, budget=4096 * 64))
    assert chunks[0] == slice(0, 64) and chunks[-1].stop == 1000
    assert sum(c.stop - c.start for c in chunks) == 1000


def test_missing_directory():
    with pytest.raises(SourceError, match="model not found"):
        Source.open("/nonexistent/model")


def test_missing_config(tmp_path):
    with pytest.raises(SourceError, match=r"no config\.json"):
        Source.open(tmp_path)


def test_truncated_safetensors(gpt_oss_dir, tmp_path):
    d = copy_model(gpt_oss_dir, tmp_path / "m")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated"):
        Source.open(d)


def test_missing_tokenizer(gpt_oss_dir, tmp_path):
    d = copy_model(gpt_oss_dir, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(SourceError, match=r"tokenizer\.json"):
        Source.open(d)


def test_pickle_refused_unless_opted_in(gpt_oss_dir, tmp_path):
    d = copy_model(gpt_oss_dir, tmp_path / "m")
    sd = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(SourceError, match="pickle"):
        Source.open(d)
    src = Source.open(d, allow_pickle=True)
    name = "model.norm.weight"
    assert np.array_equal(src.read_f32(name), sd[name].float().numpy())


def test_remote_code_refused(gpt_oss_dir, tmp_path):
    d = copy_model(gpt_oss_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="trust-remote-code"):
        Source.open(d)


def test_missing_shard(gpt_oss_dir, tmp_path):
    d = copy_model(gpt_oss_dir, tmp_path / "m")
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(SourceError, match="missing"):
        Source.open(d)


def test_mxfp4_source_is_recognised(mxfp4_dir):
    src = Source.open(mxfp4_dir)
    assert src.is_mxfp4
    e = src.entry("model.layers.0.mlp.experts.gate_up_proj_blocks")
    assert e.dtype == "U8" and e.shape == (4, 512, 288 // 32, 16)


def test_weight_files_follow_transformers_precedence(gpt_oss_dir, tmp_path):
    """A stale model.safetensors next to an index: transformers loads model.safetensors, so
    we must too, or parity would compare against different weights than we convert."""
    d = copy_model(gpt_oss_dir, tmp_path / "m")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    src = Source.open(d)
    assert {e.file.name for e in src.tensors.values()} == {"model.safetensors"}
