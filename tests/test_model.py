"""Model, baking, deform.onnx parity, checkpoints, density control, loss terms."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from embedtalk_sdk.export.onnx_graph import build_deform_onnx, io_spec
from embedtalk_sdk.functional.encoding import positional_encoding
from embedtalk_sdk.model.checkpoint import Checkpoint, CheckpointError
from embedtalk_sdk.model.deform import BakedDeform, DeformConfig, DeformNet
from embedtalk_sdk.model.gaussians import GaussianModel
from embedtalk_sdk.runtime.deform_schema import encoded_dim
from embedtalk_sdk.train.losses import embedding_smoothness, knn_indices
from embedtalk_sdk.train.strategy import DensifyConfig, GradStats, densify_and_prune


def random_net(cfg: DeformConfig = DeformConfig(), seed: int = 0) -> DeformNet:
    """A DeformNet with every weight random (heads included: the default init is zero)."""
    torch.manual_seed(seed)
    net = DeformNet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    net.audio_net.set_feature_stats(torch.randn(200, cfg.feature_dim) * 2 + 1)
    return net


def test_positional_encoding_matches_formula():
    x = torch.tensor([[0.3, -1.2]])
    out = positional_encoding(x, 2)
    expected = [0.3, -1.2]
    for k in range(2):
        f = (2**k) * math.pi
        expected += [math.sin(f * 0.3), math.sin(f * -1.2), math.cos(f * 0.3), math.cos(f * -1.2)]
    assert out.shape[-1] == encoded_dim(2, 2)
    assert torch.allclose(out[0], torch.tensor(expected), atol=1e-6)


def test_split_first_layer_equals_linear_on_concatenation():
    """Eq. 9 feeds gamma(z) (+) a (+) gamma(e) to one MLP; our split layer must be that MLP."""
    cfg = DeformConfig(feature_dim=8)
    net = random_net(cfg)
    z, win, aus = torch.randn(50, cfg.embed_dim), torch.randn(3, cfg.window, 8), torch.rand(3, 6)
    dmu, dalpha = net(z, win, aus)
    gz = positional_encoding(z, cfg.embed_freqs)
    a = net.audio_net(win)
    ge = positional_encoding(aus, cfg.au_freqs)
    first = torch.nn.Linear(gz.shape[1] + a.shape[1] + ge.shape[1], cfg.hidden)
    with torch.no_grad():
        first.weight.copy_(torch.cat([net.embed_proj.weight, net.audio_proj.weight, net.au_proj.weight], 1))
        first.bias.copy_(net.audio_proj.bias)
    x = torch.cat([gz[None].expand(3, -1, -1), a[:, None].expand(-1, 50, -1), ge[:, None].expand(-1, 50, -1)], -1)
    h = torch.relu(first(x))
    for layer in net.trunk:
        h = torch.relu(layer(h))
    bound = cfg.max_offset
    assert torch.allclose(dmu, bound * torch.tanh(net.mu_head(h) / bound), atol=1e-5)
    assert torch.allclose(dalpha, net.alpha_head(h)[..., 0], atol=1e-5)


@pytest.mark.parametrize("table_dtype", ["float32", "float16"])
def test_baked_equals_unbaked_and_onnx_equals_torch(table_dtype):
    cfg = DeformConfig(feature_dim=16)
    net = random_net(cfg).eval()
    z = torch.randn(3000, cfg.embed_dim)
    with torch.no_grad():
        baked = BakedDeform(net, net.embedding_table(z))
        win, aus = torch.randn(5, cfg.window, 16), torch.rand(5, 6)
        ref_mu, ref_alpha = net(z, win, aus)
        b_mu, b_alpha = baked(win, aus)
        # The fp16 graph is the baked net with its table rounded to fp16, computed in fp32.
        stored = BakedDeform(net, baked.table.to(getattr(torch, table_dtype)).float())
        want_mu, want_alpha = stored(win, aus)
    assert torch.allclose(ref_mu, b_mu, atol=1e-6) and torch.allclose(ref_alpha, b_alpha, atol=1e-6)
    model = build_deform_onnx(baked, table_dtype)
    table = next(t for t in model.graph.initializer if t.name == "gaussian_table")
    assert onnx.helper.tensor_dtype_to_np_dtype(table.data_type) == np.dtype(table_dtype)
    spec = io_spec(model)
    assert spec["inputs"] == {"audio_window": ["batch", cfg.window, 16], "aus": ["batch", 6]}
    assert spec["outputs"] == {"delta_means": ["batch", 3000, 3], "delta_opacity": ["batch", 3000]}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mu, alpha = sess.run(["delta_means", "delta_opacity"], {"audio_window": win.numpy(), "aus": aus.numpy()})
    assert np.abs(mu - want_mu.numpy()).max() <= 1e-4
    assert np.abs(alpha - want_alpha.numpy()).max() <= 1e-4
    assert np.abs(ref_mu.numpy()).max() > 1e-2  # the comparison is not between zeros


def _gaussians(n: int = 400, seed: int = 0) -> GaussianModel:
    rng = np.random.default_rng(seed)
    pts = np.concatenate([rng.normal(scale=0.05, size=(n, 3)), rng.uniform(size=(n, 3))], 1).astype(np.float32)
    return GaussianModel.from_points(pts, embed_dim=8)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    ckpt = Checkpoint(_gaussians(), random_net(DeformConfig(feature_dim=8, embed_dim=8)), {"fps": 25})
    path = ckpt.save(tmp_path / "run" / "ckpt.pt")
    back = Checkpoint.load(path)
    for k, v in ckpt.gaussians.params.items():
        assert torch.equal(v, back.gaussians.params[k])
    for k, v in ckpt.deform.state_dict().items():
        assert torch.equal(v, back.deform.state_dict()[k])
    assert back.meta == {"fps": 25} and back.deform.cfg == ckpt.deform.cfg
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp file left behind

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt.*truncated or corrupt"):
        Checkpoint.load(truncated)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Checkpoint.load(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an EmbedTalk checkpoint"):
        Checkpoint.load(foreign)


def test_embedding_smoothness_matches_eq_11():
    torch.manual_seed(0)
    means, z = torch.randn(30, 3) * 0.02, torch.randn(30, 4)
    nbrs = knn_indices(means, k=5)
    brute = torch.cdist(means, means).fill_diagonal_(float("inf")).topk(5, largest=False).indices
    assert torch.equal(nbrs.sort(1).values, brute.sort(1).values)
    total = 0.0
    for i in range(30):
        for j in nbrs[i].tolist():
            w = math.exp(-2000 * float((means[i] - means[j]).pow(2).sum()))
            total += w * float((z[i] - z[j]).norm())
    assert embedding_smoothness(z, means, nbrs) == pytest.approx(total / (30 * 5), rel=1e-5)
    rows = torch.tensor([3, 7, 7, 21])
    subset = 0.0
    for i in rows.tolist():
        for j in nbrs[i].tolist():
            w = math.exp(-2000 * float((means[i] - means[j]).pow(2).sum()))
            subset += w * float((z[i] - z[j]).norm())
    assert embedding_smoothness(z, means, nbrs, rows=rows) == pytest.approx(subset / (4 * 5), rel=1e-5)


def test_densify_and_prune_keep_every_tensor_and_optimizer_state_in_step():
    g = _gaussians(200)
    opt = torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k} for k, p in g.params.items()])
    loss = sum(p.pow(2).sum() for p in g.params.values())
    loss.backward()
    opt.step()
    with torch.no_grad():
        g.params["log_scales"][:] = math.log(0.001)
        g.params["opacity_logits"][:10] = -10.0  # these must be pruned
        g.params["log_scales"][10:20] = math.log(0.05)  # big: split
    stats = GradStats(len(g))
    hot = torch.zeros(len(g), dtype=torch.bool)
    hot[10:30] = True  # 10 big (split) + 10 small (clone)
    stats.add(torch.where(hot, 1.0, 0.0), torch.ones(len(g), dtype=torch.bool))
    counts = densify_and_prune(g, opt, stats, DensifyConfig(grad_threshold=0.5, split_scale=0.01))
    assert counts["cloned"] == 10 and counts["split"] == 10 and counts["pruned"] == 10
    assert len(g) == 200 + 20 - 10
    for group in opt.param_groups:
        param = group["params"][0]
        assert param is g.params[group["name"]]
        assert param.shape[0] == len(g)
        assert opt.state[param]["exp_avg"].shape == param.shape
    # The optimiser still steps after the topology change.
    sum(p.pow(2).sum() for p in g.params.values()).backward()
    opt.step()


def _payload_edits():
    def means_2d(p):
        p["gaussians"]["means"] = p["gaussians"]["means"][:, :2]

    def sh0_rows(p):
        p["gaussians"]["sh0"] = torch.zeros(100, 3)

    def nan_scale(p):
        p["gaussians"]["log_scales"][0, 0] = float("nan")

    def no_meta(p):
        del p["meta"]

    def no_embeddings(p):
        del p["gaussians"]["embeddings"]

    def narrow_embeddings(p):
        p["gaussians"]["embeddings"] = p["gaussians"]["embeddings"][:, :4]

    def wrong_layer(p):
        key = next(k for k in p["deform"] if k.endswith("weight"))
        p["deform"][key] = torch.zeros(1, 1)

    def bad_config(p):
        p["deform_config"] = "{not json"

    def config_typo(p):  # a width under a name the network does not have would be dropped silently
        p["deform_config"] = json.dumps({**json.loads(p["deform_config"]), "hiden": 128})

    def meta_list(p):
        p["meta"] = "[1, 2]"

    return [
        (means_2d, r"gaussians\.means is \(400, 2\), expected \(400, 3\)"),
        (sh0_rows, r"gaussians\.sh0 is \(100, 3\), expected \(400, 3\)"),
        (nan_scale, r"gaussians\.log_scales holds non-finite"),
        (no_meta, r"lacks meta"),
        (no_embeddings, r"lacks the Gaussians' embeddings"),
        (narrow_embeddings, r"gaussians\.embeddings is \(400, 4\), expected \(400, 8\)"),
        (wrong_layer, r"network weights do not fit its config"),
        (bad_config, r"unreadable network config or meta"),
        (config_typo, r"unreadable network config .*unknown fields \['hiden'\]"),
        (meta_list, r"meta is list, expected an object"),
    ]


@pytest.mark.parametrize("edit, message", _payload_edits(), ids=lambda v: getattr(v, "__name__", ""))
def test_damaged_checkpoints_are_refused_with_one_clear_error(tmp_path, edit, message):
    # Before: RuntimeError / KeyError tracebacks in export and eval, or a bundle Avatar.load rejects.
    path = Checkpoint(_gaussians(), random_net(DeformConfig(feature_dim=8, embed_dim=8)), {"fps": 25}).save(tmp_path / "c.pt")
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.load(path)


def test_checkpoint_without_playback_meta_is_refused_by_export(tmp_path):
    from embedtalk_sdk.export.exporter import export_bundle

    path = Checkpoint(_gaussians(), random_net(DeformConfig(feature_dim=8, embed_dim=8)), {"fps": 25}).save(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"meta lacks width, height, K, audio, aus, data_dir"):
        export_bundle(path, tmp_path / "x.etk", log=lambda m: None)
    assert not (tmp_path / "x.etk").exists()
