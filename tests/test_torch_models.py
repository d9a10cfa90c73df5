"""gncpu.torch.GroupNorm, optimize() and the "gncpu" compile backend on
diffusers models with tiny configs and random weights (nothing downloaded)."""
import copy

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
import torch.nn.functional as F  # noqa: E402

import gncpu.torch as gt  # noqa: E402
from gncpu.torch import backend as gncpu_backend_module  # noqa: E402

# optimize() and the backend promise outputs within this of stock torch,
# relative to the output's largest magnitude
REL_TOL = 1e-5


def tiny_vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=32).eval()


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def run_vae(model, latents):
    return model.decode(latents).sample


def run_unet(model, inputs):
    sample, timesteps = inputs
    return model(sample, timesteps).sample


MODELS = {
    "vae": (tiny_vae, run_vae, lambda: torch.randn(1, 4, 8, 8)),
    "unet": (tiny_unet, run_unet, lambda: (torch.randn(2, 3, 16, 16), torch.tensor([3, 700]))),
}


def count_modules(model, kind):
    return sum(type(m) is kind for m in model.modules())


def expected_fusions(model):
    """Each diffusers ResnetBlock2D fuses norm1 and norm2 with its nonlinearity;
    each Encoder/Decoder/UNet fuses conv_norm_out with conv_act."""
    from diffusers.models.resnet import ResnetBlock2D

    resnets = sum(isinstance(m, ResnetBlock2D) for m in model.modules())
    outputs = sum(hasattr(m, "conv_norm_out") and hasattr(m, "conv_act") for m in model.modules())
    return 2 * resnets + outputs


def assert_close_rel(actual, expected):
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= REL_TOL * scale, f"max |diff| {err:.3e} > {REL_TOL:g} * {scale:.3e}"


class FusedCallCounter:
    """Counts gncpu GroupNorm calls made with a fused activation."""

    def __init__(self, monkeypatch):
        self.fused = self.plain = 0
        forward = gt.GroupNorm.forward

        def counting(module, input, activation=...):
            resolved = module.activation if activation is ... else activation
            if resolved is None:
                self.plain += 1
            else:
                self.fused += 1
            return forward(module, input, activation)

        monkeypatch.setattr(gt.GroupNorm, "forward", counting)


# ---------------------------------------------------------------- module

def test_module_matches_torch_and_keeps_state_dict_keys():
    torch.manual_seed(1)
    stock = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(stock.weight)
    torch.nn.init.normal_(stock.bias)
    ours = gt.GroupNorm(4, 16, activation="silu")
    assert isinstance(ours, torch.nn.GroupNorm)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), F.silu(stock(x)))
        torch.testing.assert_close(ours(x, activation=None), stock(x))
    assert "activation='silu'" in repr(ours)


def test_from_module_shares_parameters_and_mode():
    stock = torch.nn.GroupNorm(2, 8).train()
    ours = gt.GroupNorm.from_module(stock, activation="relu")
    assert ours.weight is stock.weight and ours.bias is stock.bias and ours.training
    assert ours.activation == "relu" and ours.eps == stock.eps
    plain = gt.GroupNorm.from_module(torch.nn.GroupNorm(2, 8, affine=False))
    assert plain.weight is None and plain.state_dict() == {}
    with pytest.raises(TypeError, match="expects a torch.nn.GroupNorm, got Linear"):
        gt.GroupNorm.from_module(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="activation='swish' is not supported"):
        gt.GroupNorm(2, 8, activation="swish")


def test_module_trains_through_torch_ops():
    ours = gt.GroupNorm(2, 8, activation="silu").train()
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    ours(x).sum().backward()
    assert x.grad is not None and ours.weight.grad is not None


# ---------------------------------------------------------------- optimize()

@pytest.mark.parametrize("name", sorted(MODELS))
def test_optimize_diffusers_model(name, monkeypatch):
    build, run, make_input = MODELS[name]
    stock, model = build(), build()
    groupnorms = count_modules(stock, torch.nn.GroupNorm)
    assert groupnorms > 0
    assert gt.optimize(model) is model
    report = model.gncpu_report
    assert count_modules(model, torch.nn.GroupNorm) == 0
    assert count_modules(model, gt.GroupNorm) == groupnorms == len(report.replaced)
    assert report.fused_count == expected_fusions(model) > 0
    assert model.state_dict().keys() == stock.state_dict().keys()
    counter = FusedCallCounter(monkeypatch)
    inputs = make_input()
    with torch.no_grad():
        expected = run(stock, inputs)
        actual = run(model, inputs)
    assert_close_rel(actual, expected)
    if name == "vae":  # decode runs the decoder only, each block once
        decoder_fused = sum(site.startswith("decoder") for site in report.fused)
        assert counter.fused == decoder_fused
    else:
        assert counter.fused == report.fused_count
    assert str(report).startswith(f"gncpu.torch.optimize: {groupnorms} GroupNorm replaced, "
                                  f"{report.fused_count} activation(s) fused")


class SharedActivation(torch.nn.Module):
    """One SiLU module used after the norm and on another path; a second norm
    whose un-activated output is still needed."""

    def __init__(self, act):
        super().__init__()
        self.norm = torch.nn.GroupNorm(2, 8)
        self.other = torch.nn.GroupNorm(2, 8)
        self.act = act

    def forward(self, x, temb):
        h = self.norm(x)
        h = self.act(h)
        temb = self.act(temb)
        y = self.other(x)
        z = self.act(y)          # y is used below: not fusable
        return h + temb + z + y


def test_shared_activation_keeps_other_paths():
    shared = torch.nn.SiLU()
    stock = torch.nn.Sequential()
    stock.a = SharedActivation(shared)
    stock.b = SharedActivation(shared)   # the same SiLU object in two blocks
    model = gt.optimize(copy.deepcopy(stock))
    assert sorted(model.gncpu_report.fused) == ["a: norm+act", "b: norm+act"]
    x, temb = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 1, 1)
    with torch.no_grad():
        ref = stock.a(x, temb) + stock.b(x, temb)
        torch.testing.assert_close(model.a(x, temb) + model.b(x, temb), ref)
        # the activation replaced after optimize(): the fused call site follows it
        model.a.act = torch.nn.Tanh()
        stock.a.act = torch.nn.Tanh()
        torch.testing.assert_close(model.a(x, temb), stock.a(x, temb))


def test_optimize_leaves_subclasses_and_rejects_non_modules():
    class MyNorm(torch.nn.GroupNorm):
        pass

    model = torch.nn.Sequential(MyNorm(2, 4), torch.nn.GroupNorm(2, 4))
    gt.optimize(model)
    assert type(model[0]) is MyNorm and type(model[1]) is gt.GroupNorm
    assert model.gncpu_report.skipped == ["0: MyNorm subclasses GroupNorm"]
    with pytest.raises(TypeError, match="expects a torch.nn.Module, got list"):
        gt.optimize([])


def test_optimized_model_compiles_fullgraph():
    model = gt.optimize(tiny_vae()).decoder
    latents = torch.randn(1, 4, 8, 8)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(latents), model(latents))


# ---------------------------------------------------------------- backend

@pytest.mark.parametrize("name", sorted(MODELS))
def test_backend_eager_inner(name, monkeypatch):
    build, run, make_input = MODELS[name]
    stock = build()
    module = stock.decoder if name == "vae" else stock
    monkeypatch.setattr(gt.gncpu_backend, "stats", {"rewritten": 0, "fused": 0})
    compiled = torch.compile(module, backend="gncpu", options={"inductor": False})
    inputs = make_input()
    with torch.no_grad():
        expected = module(inputs) if name == "vae" else run(stock, inputs)
        actual = compiled(inputs) if name == "vae" else run(compiled, inputs)
    assert_close_rel(actual, expected)
    # every norm of the graph, and each one followed by a SiLU (what
    # optimize() finds in the code) fused
    norms = count_modules(module, torch.nn.GroupNorm)
    assert gt.gncpu_backend.stats == {"rewritten": norms, "fused": expected_fusions(module)}


@pytest.mark.parametrize("freezing", [False, True])
def test_backend_inductor_on_vae_decoder(monkeypatch, freezing):
    if not gncpu_backend_module.inductor_available():
        pytest.skip("inductor needs a C++ compiler")
    decoder = tiny_vae().decoder
    monkeypatch.setattr(gt.gncpu_backend, "stats", {"rewritten": 0, "fused": 0})
    compiled = torch.compile(decoder, backend="gncpu", fullgraph=True, options={"freezing": freezing})
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert_close_rel(compiled(latents), decoder(latents))
    norms = count_modules(decoder, torch.nn.GroupNorm)
    assert gt.gncpu_backend.stats == {"rewritten": norms, "fused": expected_fusions(decoder)}


def test_backend_leaves_training_graphs_and_unfusable_activations():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.GroupNorm(2, 8)

        def forward(self, x):
            y = self.norm(x)
            return F.gelu(y) + y          # y has two users: the norm alone is rewritten

    block = Block()
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    stats = {"rewritten": 0, "fused": 0}
    gt.gncpu_backend.stats = stats
    try:
        compiled = torch.compile(block, backend="gncpu", options={"inductor": False})
        out = compiled(x)                 # training: mean/rstd saved, nothing rewritten
        out.sum().backward()
        assert stats == {"rewritten": 0, "fused": 0} and x.grad is not None
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), block(x))
        assert stats == {"rewritten": 1, "fused": 0}
    finally:
        gt.gncpu_backend.stats = {"rewritten": 0, "fused": 0}


def test_backend_rejects_unknown_options():
    with pytest.raises(Exception, match="unknown options"):
        torch.compile(torch.nn.GroupNorm(2, 4), backend="gncpu", options={"fast": True})(
            torch.randn(1, 4, 2, 2))
