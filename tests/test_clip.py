"""CLIP text encoders and tokenizer against transformers (PyTorch) on tiny random configs."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from jaxdistill.models import clip  # noqa: E402
from jaxdistill.models.weights import WeightsError, module_tensors  # noqa: E402
from jaxdistill.train.sharding import make_mesh  # noqa: E402
from sd_folder import write_tokenizer  # noqa: E402

TINY = dict(vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, projection_dim=24, bos_token_id=0, pad_token_id=1)
# Legacy pooling (eos_token_id == 2): the argmax of the ids, here the "EOS" 99 (CLIP's EOS is its
# largest id); the first-EOS rule would pick position 0 of row 0 instead.
LEGACY_IDS = np.array([[0, 5, 6, 99, 99, 99, 99, 99, 99, 99, 99, 99],
                       [0, 7, 8, 9, 10, 11, 12, 99, 99, 99, 99, 99]])
LEGACY_POS = [3, 7]
# First-EOS pooling (eos_token_id == 7): the ids' argmax (98) is elsewhere.
EOS_IDS = np.array([[0, 98, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7],
                    [0, 40, 41, 42, 98, 43, 7, 7, 7, 7, 7, 7]])
EOS_POS = [3, 6]


def _torch_model(tmp, name, cls, **kw):
    torch.manual_seed(len(name))
    model = cls(transformers.CLIPTextConfig(**TINY, **kw)).eval()
    model.save_pretrained(os.path.join(tmp, name))
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("clip"))
    te = _torch_model(tmp, "text_encoder", transformers.CLIPTextModel, hidden_act="quick_gelu", eos_token_id=2)
    te2 = _torch_model(tmp, "text_encoder_2", transformers.CLIPTextModelWithProjection, hidden_act="gelu",
                       eos_token_id=7)
    with open(os.path.join(tmp, "model_index.json"), "w") as f:
        json.dump({"_class_name": "StableDiffusionXLPipeline"}, f)
    return tmp, te, te2


# Jitted: one compilation per model instead of one per eager op (seconds on CPU).
_forward = nnx.jit(lambda model, ids: model(ids, output_hidden_states=True))


def _err(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - b.detach().numpy())))


def _rewrite(src: str, dst: str, rename) -> None:
    """Copy a transformers folder, renaming its keys (and adding SD's position_ids buffer)."""
    os.makedirs(dst, exist_ok=True)
    shutil.copy(os.path.join(src, "config.json"), dst)
    sd = {rename(k): v for k, v in load_file(os.path.join(src, "model.safetensors")).items()}
    with open(os.path.join(src, "config.json")) as f:
        n = json.load(f)["max_position_embeddings"]
    sd[rename("text_model.embeddings.position_ids")] = torch.arange(n)[None]
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


def test_text_model_parity_legacy_pooling(folders):
    tmp, te, _ = folders
    ours = clip.CLIPTextModel.from_pretrained(tmp, subfolder="text_encoder")
    with torch.no_grad():
        ref = te(torch.tensor(LEGACY_IDS), output_hidden_states=True)
    out = _forward(ours, jnp.asarray(LEGACY_IDS))
    errs = {"last_hidden_state": _err(out.last_hidden_state, ref.last_hidden_state),
            "penultimate": _err(out.hidden_states[-2], ref.hidden_states[-2]),
            "pooler_output": _err(out.pooler_output, ref.pooler_output)}
    print("CLIPTextModel (quick_gelu, eos 2) max abs error:", errs)
    assert len(out.hidden_states) == len(ref.hidden_states) == TINY["num_hidden_layers"] + 1
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert _err(a, b) < 1e-4
    assert max(errs.values()) < 1e-4
    np.testing.assert_array_equal(out.pooler_output, np.asarray(out.last_hidden_state)[[0, 1], LEGACY_POS])
    assert jax.eval_shape(lambda ids: ours(ids), jnp.asarray(LEGACY_IDS)).hidden_states is None


def test_with_projection_parity_eos_pooling(folders):
    tmp, _, te2 = folders
    ours = clip.from_pretrained(tmp, subfolder="text_encoder_2")
    assert isinstance(ours, clip.CLIPTextModelWithProjection)
    with torch.no_grad():
        ref = te2(torch.tensor(EOS_IDS), output_hidden_states=True)
    out = _forward(ours, jnp.asarray(EOS_IDS))
    errs = {"last_hidden_state": _err(out.last_hidden_state, ref.last_hidden_state),
            "penultimate": _err(out.hidden_states[-2], ref.hidden_states[-2]),
            "text_embeds": _err(out.text_embeds, ref.text_embeds)}
    print("CLIPTextModelWithProjection (gelu, eos 7) max abs error:", errs)
    assert max(errs.values()) < 1e-4
    assert out.text_embeds.shape == (2, TINY["projection_dim"])
    np.testing.assert_array_equal(out.pooler_output, np.asarray(out.last_hidden_state)[[0, 1], EOS_POS])


@pytest.mark.parametrize("cls_name", ["CLIPTextModel", "CLIPTextModelWithProjection"])
def test_keys_with_and_without_text_model_prefix(folders, tmp_path, cls_name):
    tmp, _, _ = folders
    cls = getattr(clip, cls_name)
    src = os.path.join(tmp, "text_encoder" if cls_name == "CLIPTextModel" else "text_encoder_2")
    keys = load_file(os.path.join(src, "model.safetensors")).keys()
    # transformers 5.23 writes CLIPTextModel flattened and ...WithProjection prefixed: cover both.
    prefixed = any(k.startswith("text_model.") for k in keys)
    assert prefixed == (cls_name == "CLIPTextModelWithProjection")
    flip = (lambda k: k.removeprefix("text_model.")) if prefixed else \
        (lambda k: k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k)
    _rewrite(src, str(tmp_path), flip)
    a, b = module_tensors(cls.from_pretrained(src)), module_tensors(cls.from_pretrained(str(tmp_path)))
    assert sorted(a) == sorted(b) and all(k.startswith(("text_model.", "text_projection.")) for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", ["text_encoder", "text_encoder_2"])
def test_save_pretrained_round_trip_into_transformers(folders, tmp_path, name):
    """transformers -> ours -> save_pretrained -> transformers: bit-identical weights."""
    tmp, te, te2 = folders
    ref = te if name == "text_encoder" else te2
    cls_name = type(ref).__name__
    ours = getattr(clip, cls_name).from_pretrained(tmp, subfolder=name)
    ours.save_pretrained(str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == [cls_name] and saved["hidden_act"] == ref.config.hidden_act
    assert all(k.startswith(("text_model.", "text_projection.")) for k in load_file(str(tmp_path / "model.safetensors")))
    theirs, info = getattr(transformers, cls_name).from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    a, b = ref.state_dict(), theirs.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for key in clip.CONFIG_DEFAULTS:
        assert getattr(theirs.config, key) == getattr(ref.config, key), key


def test_load_onto_mesh_and_model_root(folders):
    tmp, _, _ = folders
    mesh = make_mesh((2, 4, 1))
    ours = clip.CLIPTextModel.from_pretrained(tmp, mesh=mesh, param_dtype=jnp.bfloat16)  # root -> text_encoder
    q = ours.text_model.encoder.layers[0].self_attn.q_proj.kernel[...]
    assert q.dtype == jnp.bfloat16 and q.sharding.spec == P("fsdp", "tensor") and q.sharding.mesh == mesh
    fc2 = ours.text_model.encoder.layers[1].mlp.fc2.kernel[...]
    assert fc2.sharding.spec == P("tensor", "fsdp")


def test_errors(folders, tmp_path):
    tmp, _, _ = folders
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        clip.CLIPTextModel({**TINY, "hidden_act": "relu"}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="clip_vision_model"):
        clip.CLIPTextModel({"model_type": "clip_vision_model", "hidden_size": 32}, rngs=nnx.Rngs(0))
    # A projection model's folder has a tensor CLIPTextModel does not use.
    with pytest.raises(WeightsError, match="text_projection.weight"):
        clip.CLIPTextModel.from_pretrained(tmp, subfolder="text_encoder_2")
    # A missing tensor is named with the file.
    src = os.path.join(tmp, "text_encoder")
    _rewrite(src, str(tmp_path), lambda k: k)
    sd = load_file(str(tmp_path / "model.safetensors"))
    del sd["final_layer_norm.bias"]
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(WeightsError, match=r"model.safetensors.*final_layer_norm.bias"):
        clip.CLIPTextModel.from_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "silu"}))
    with pytest.raises(ValueError, match=r"config.json.*hidden_act='silu'"):
        clip.CLIPTextModel.from_pretrained(str(tmp_path))
    ours = clip.CLIPTextModel.from_pretrained(tmp)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours(jnp.zeros((1, 17), jnp.int32))


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer(tmp_path):
    write_tokenizer(str(tmp_path / "tokenizer"), max_length=8)
    tok = clip.load_tokenizer(str(tmp_path))  # model root with a tokenizer/ subfolder
    vocab = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text())
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    prompts = ["A red  circle", "a photo of a blue square, red circle", "of"]
    ids = clip.tokenize(tok, prompts, max_length=8)
    assert ids.dtype == np.int32 and ids.shape == (3, 8)
    assert ids[0].tolist() == [bos, vocab["a</w>"], vocab["red</w>"], vocab["circle</w>"]] + [eos] * 4
    assert ids[1, 0] == bos and ids[1, -1] == eos  # truncated, EOS kept
    assert ids[2].tolist() == [bos, vocab["of</w>"]] + [eos] * 6
    # The same ids as transformers' CLIPTokenizer built straight from the files, as SD pipelines call it.
    merges = [tuple(m.split()) for m in (tmp_path / "tokenizer" / "merges.txt").read_text().splitlines()[1:]]
    ref = transformers.CLIPTokenizer(vocab=vocab, merges=merges)
    expected = ref(prompts, padding="max_length", max_length=8, truncation=True, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ids, expected)
    # max_length defaults to model_max_length; the tokenizer folder itself also works.
    np.testing.assert_array_equal(clip.tokenize(clip.load_tokenizer(str(tmp_path / "tokenizer")), prompts), ids)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        clip.load_tokenizer(str(tmp_path / "nothing"))
