"""Regenerate the small exporter-made models in this folder.

The tests only read the committed .onnx files (no torch or TensorFlow needed
to run them). Each family comes from the real exporter:

    python tests/models/make_models.py torch      # torch 2.13: legacy exporter at opsets 14, 17;
                                                  # dynamo exporter at 18 and 21 (needs onnxscript)
    python tests/models/make_models.py keras      # tf2onnx from Keras 3 (tf.keras) and Keras 2
                                                  # (tf_keras) GroupNormalization, opsets 17, 18
    python tests/models/make_models.py hf         # diffusers SD-VAE decoder and DDPM UNet,
                                                  # transformers wav2vec2 feature encoder
                                                  # (tiny random configs; legacy 17, dynamo 21)
    python tests/models/make_models.py function   # GroupNormalization-18/21 with the ONNX
                                                  # function body inlined (what onnxruntime runs)

TensorFlow and tf2onnx pin their own protobuf/numpy, so the keras family is
best run from a separate virtual environment:

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf2onnx tf-keras
    /tmp/tfenv/bin/python tests/models/make_models.py keras

diffusers and transformers need no torch of their own: install them beside
it (e.g. `pip install --target DIR diffusers transformers`, then
PYTHONPATH=DIR); models are built from configs with random weights, nothing
is downloaded.

Names: <family>_<model>[_opset<k>].onnx. Every model's first input is the
data input; weights are seeded so files regenerate identically. Each file's
metadata "gncpu.group_norms" records how many GroupNorms its source has.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------
# torch

def _torch_modules():
    import torch
    from torch import nn

    class ConvGNSiLU(nn.Module):
        """Conv2d -> GroupNorm -> SiLU, the SD UNet/VAE building block."""

        def __init__(self, groups=4, channels=8, affine=True):
            super().__init__()
            self.conv = nn.Conv2d(4, channels, 3, padding=1)
            self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=affine)

        def forward(self, x):
            return nn.functional.silu(self.norm(self.conv(x)))

    class ConvGN(nn.Module):
        """GroupNorm without an activation after it (BiT / PoolFormer style)."""

        def __init__(self, groups, channels=8):
            super().__init__()
            self.conv = nn.Conv2d(4, channels, 3, padding=1)
            self.norm = nn.GroupNorm(groups, channels)

        def forward(self, x):
            return self.norm(self.conv(x)) + 1.0

    class Wav2Vec2FeatureLayer(nn.Module):
        """wav2vec2's first feature-encoder layer: Conv1d -> GroupNorm(G = C) -> GELU."""

        def __init__(self, channels=16):
            super().__init__()
            self.conv = nn.Conv1d(1, channels, 10, stride=5, bias=False)
            self.norm = nn.GroupNorm(channels, channels)

        def forward(self, x):
            return nn.functional.gelu(self.norm(self.conv(x)))

    class ResnetBlock(nn.Module):
        def __init__(self, channels, groups):
            super().__init__()
            self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.norm2 = nn.GroupNorm(groups, channels, eps=1e-6)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x):
            h = self.conv1(nn.functional.silu(self.norm1(x)))
            h = self.conv2(nn.functional.silu(self.norm2(h)))
            return x + h

    class AttnBlock(nn.Module):
        """The VAE mid-block attention: GroupNorm (no activation) -> q, k, v."""

        def __init__(self, channels, groups):
            super().__init__()
            self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
            self.qkv = nn.Linear(channels, 3 * channels)
            self.out = nn.Linear(channels, channels)

        def forward(self, x):
            n, c, h, w = x.shape
            t = self.norm(x).reshape(n, c, h * w).transpose(1, 2)
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            a = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1) @ v
            return x + self.out(a).transpose(1, 2).reshape(n, c, h, w)

    class VaeDecoderBlock(nn.Module):
        """A scaled-down SD VAE decoder stage: conv_in, mid (resnet, attention,
        resnet), up (resnet, nearest upsample, conv), norm_out -> SiLU -> conv_out."""

        def __init__(self, latent=4, channels=32, groups=8):
            super().__init__()
            self.conv_in = nn.Conv2d(latent, channels, 3, padding=1)
            self.mid1 = ResnetBlock(channels, groups)
            self.attn = AttnBlock(channels, groups)
            self.mid2 = ResnetBlock(channels, groups)
            self.up1 = ResnetBlock(channels, groups)
            self.up_conv = nn.Conv2d(channels, channels, 3, padding=1)
            self.norm_out = nn.GroupNorm(groups, channels, eps=1e-6)
            self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)

        def forward(self, z):
            h = self.mid2(self.attn(self.mid1(self.conv_in(z))))
            h = self.up1(h)
            h = self.up_conv(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
            return self.conv_out(nn.functional.silu(self.norm_out(h)))

    def randomize(module):
        # Non-trivial affine parameters, so a fusion that dropped them would show.
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for sub in module.modules():
                if isinstance(sub, nn.GroupNorm) and sub.affine:
                    sub.weight.copy_(1 + 0.5 * torch.randn(sub.weight.shape, generator=generator))
                    sub.bias.copy_(0.5 * torch.randn(sub.bias.shape, generator=generator))
        return module.eval()

    return {
        # name: (module, example input shape)
        "conv_gn_silu": (lambda: randomize(ConvGNSiLU()), (1, 4, 8, 8)),
        "gn_no_affine_silu": (lambda: randomize(ConvGNSiLU(affine=False)), (2, 4, 6, 6)),
        "gn_g1": (lambda: randomize(ConvGN(groups=1)), (1, 4, 7, 7)),
        "gn_g_equals_c": (lambda: randomize(ConvGN(groups=8)), (1, 4, 5, 5)),
        "wav2vec2_conv1d_gn": (lambda: randomize(Wav2Vec2FeatureLayer()), (1, 1, 400)),
        "vae_decoder_block": (lambda: randomize(VaeDecoderBlock()), (1, 4, 8, 8)),
    }


def _tag(path, group_norms):
    """Record in the file how many GroupNorms its source model has: the
    tests check that exactly that many run natively."""
    import onnx
    model = onnx.load(path)
    kept = [p for p in model.metadata_props if p.key != "gncpu.group_norms"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = "gncpu.group_norms", str(group_norms)
    onnx.save(model, path)


def _export_torch(module, example, path, exporter, opset):
    import torch
    if exporter == "legacy":
        torch.onnx.export(module, example, path, opset_version=opset, dynamo=False,
                          input_names=["x"], output_names=["y"])
    else:
        program = torch.onnx.export(module, example, dynamo=True, opset_version=opset,
                                    input_names=["x"], output_names=["y"])
        program.save(path)
    _tag(path, sum(isinstance(m, torch.nn.GroupNorm) for m in module.modules()))


def make_torch():
    import torch

    written = []
    modules = _torch_modules()
    for name, (build, shape) in modules.items():
        for exporter, opset in (("legacy", 14), ("legacy", 17), ("dynamo", 18), ("dynamo", 21)):
            torch.manual_seed(0)
            path = os.path.join(HERE, f"torch_{exporter}_{name}_opset{opset}.onnx")
            _export_torch(build(), (torch.randn(shape),), path, exporter, opset)
            written.append(path)
    # Dynamic batch and spatial dims: reshape targets come from Shape(x).
    for name in ("vae_decoder_block", "wav2vec2_conv1d_gn"):
        build, shape = modules[name]
        torch.manual_seed(0)
        module = build()
        axes = {0: "N", 2: "L"} if len(shape) == 3 else {0: "N", 2: "H", 3: "W"}
        path = os.path.join(HERE, f"torch_legacy_dynamic_{name}_opset17.onnx")
        torch.onnx.export(module, (torch.randn(shape),), path, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": axes, "y": axes})
        _tag(path, sum(isinstance(m, torch.nn.GroupNorm) for m in module.modules()))
        written.append(path)
    # float16 models: weights, the InstanceNorm and the GELU constants in half precision.
    for name in ("conv_gn_silu", "wav2vec2_conv1d_gn"):
        build, shape = modules[name]
        torch.manual_seed(0)
        path = os.path.join(HERE, f"torch_legacy_fp16_{name}_opset17.onnx")
        _export_torch(build().half(), (torch.randn(shape).half(),), path, "legacy", 17)
        written.append(path)
    return written


# ----------------------------------------------------------------------------
# Hugging Face architectures (diffusers, transformers), tiny random configs

def _hf_modules():
    import torch
    from diffusers import AutoencoderKL, UNet2DModel
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    class VaeDecode(torch.nn.Module):
        """diffusers' AutoencoderKL decoder (SD VAE architecture, tiny widths)."""

        def __init__(self):
            super().__init__()
            self.vae = AutoencoderKL(
                in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                block_out_channels=(8, 16), layers_per_block=1, sample_size=16)
            self.decoder = self.vae.decoder  # counted GroupNorms: the decoder's only

        def modules_to_count(self):
            return self.decoder.modules()

        def forward(self, z):
            return self.vae.decode(z).sample

    class UNet(torch.nn.Module):
        """diffusers' UNet2DModel (DDPM UNet: GN, SiLU, attention, time embedding)."""

        def __init__(self):
            super().__init__()
            self.unet = UNet2DModel(
                sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, norm_num_groups=4,
                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)

        def modules_to_count(self):
            return self.unet.modules()

        def forward(self, x):
            return self.unet(x, 10).sample

    class FeatureEncoder(torch.nn.Module):
        """transformers' Wav2Vec2 feature encoder with feat_extract_norm="group":
        Conv1d -> GroupNorm(G = C) -> GELU, then conv layers."""

        def __init__(self):
            super().__init__()
            config = Wav2Vec2Config(conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2),
                                    feat_extract_norm="group", hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32)
            self.encoder = Wav2Vec2Model(config).feature_extractor

        def modules_to_count(self):
            return self.encoder.modules()

        def forward(self, x):
            return self.encoder(x)

    return {"hf_sd_vae_decoder": (VaeDecode, (1, 4, 8, 8)), "hf_ddpm_unet": (UNet, (1, 3, 8, 8)),
            "hf_wav2vec2_feature_encoder": (FeatureEncoder, (1, 400))}


def make_hf():
    import torch

    written = []
    for name, (build, shape) in _hf_modules().items():
        for exporter, opset in (("legacy", 17), ("dynamo", 21)):
            torch.manual_seed(0)
            module = build().eval()
            path = os.path.join(HERE, f"torch_{exporter}_{name}_opset{opset}.onnx")
            _export_torch(module, (torch.randn(shape),), path, exporter, opset)
            _tag(path, sum(isinstance(m, torch.nn.GroupNorm) for m in module.modules_to_count()))
            written.append(path)
    return written


# ----------------------------------------------------------------------------
# keras / tf2onnx

def make_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf2onnx

    try:  # Keras 2 (tf_keras): its GroupNormalization takes masked "weighted moments"
        import tf_keras
    except ImportError:
        tf_keras = None

    def build(keras, name):
        keras.utils.set_random_seed(0)
        if name == "conv1d_gn":
            inp = keras.Input((40, 1))
            h = keras.layers.Conv1D(16, 5, strides=2)(inp)
            h = keras.layers.GroupNormalization(groups=16)(h)
            out = keras.activations.relu(h)  # tf2onnx cannot convert exact GELU (Erfc)
            return keras.Model(inp, out), (None, 40, 1)
        groups = {"gn_silu": 4, "gn_g1": 1, "gn_g_equals_c": 8}[name]
        inp = keras.Input((6, 6, 3))
        h = keras.layers.Conv2D(8, 3, padding="same")(inp)
        h = keras.layers.GroupNormalization(groups=groups)(h)
        out = keras.activations.swish(h) if name == "gn_silu" else h * 2.0  # swish = SiLU
        return keras.Model(inp, out), (None, 6, 6, 3)

    cases = [(tf.keras, "keras3", name, 17) for name in ("gn_silu", "gn_g1", "gn_g_equals_c", "conv1d_gn")]
    cases.append((tf.keras, "keras3", "gn_silu", 18))  # ReduceMean axes as an input
    if tf_keras is not None:
        cases += [(tf_keras, "keras2", name, 17) for name in ("gn_silu", "gn_g1", "conv1d_gn")]
        cases.append((tf_keras, "keras2", "gn_silu", 18))
    written = []
    rng = np.random.default_rng(0)
    for keras, flavour, name, opset in cases:
        model, shape = build(keras, name)
        count = 0
        for layer in model.layers:
            if isinstance(layer, keras.layers.GroupNormalization):
                count += 1
                gamma, beta = layer.get_weights()
                layer.set_weights([1 + 0.5 * rng.standard_normal(gamma.shape).astype(np.float32),
                                   0.5 * rng.standard_normal(beta.shape).astype(np.float32)])
        spec = (tf.TensorSpec(shape, tf.float32, name="x"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "gncpu.group_norms", str(count)
        path = os.path.join(HERE, f"tf2onnx_{flavour}_{name}_opset{opset}.onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        written.append(path)
    return written


# ----------------------------------------------------------------------------
# GroupNormalization's ONNX function body, inlined

def _inline_function_body(opset, x_shape, groups, epsilon, silu):
    """A model whose GN is the schema's own function body expanded in place
    (how onnxruntime runs GroupNormalization), weights as initializers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = x_shape[1]
    param_shape = [groups] if opset < 21 else [channels]
    node = helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["gn"],
                            num_groups=groups, epsilon=epsilon)
    types = [helper.make_tensor_type_proto(TensorProto.FLOAT, s)
             for s in (x_shape, param_shape, param_shape)]
    schema = onnx.defs.get_schema("GroupNormalization", opset)
    body = onnx.FunctionProto()
    body.ParseFromString(schema.get_context_dependent_function(
        node.SerializeToString(), [t.SerializeToString() for t in types]))
    # Rename the body's values so they read like an exporter's and cannot
    # collide with the graph's; formal parameters map to the graph's names.
    mapping = {"X": "x", "scale": "scale", "bias": "bias", "Y": "gn"}
    nodes = []
    for k, n in enumerate(body.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = f"gn_body_{k}_{n.op_type}"
        copy.input[:] = [mapping.get(i, f"gn/{i}") if i else "" for i in n.input]
        copy.output[:] = [mapping.get(o, f"gn/{o}") for o in n.output]
        nodes.append(copy)
    rng = np.random.default_rng(opset)
    initializers = [
        numpy_helper.from_array((1 + 0.5 * rng.standard_normal(param_shape)).astype(np.float32), "scale"),
        numpy_helper.from_array((0.5 * rng.standard_normal(param_shape)).astype(np.float32), "bias"),
    ]
    output = "gn"
    if silu:
        nodes += [helper.make_node("Sigmoid", ["gn"], ["gn_sigmoid"]),
                  helper.make_node("Mul", ["gn", "gn_sigmoid"], ["y"])]
        output = "y"
    graph = helper.make_graph(nodes, f"group_norm_{opset}_function_body",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="gncpu tests/models/make_models.py")
    helper.set_model_props(model, {"gncpu.group_norms": "1"})
    return model


def make_function():
    import onnx

    written = []
    cases = {
        "function_body_gn_silu": ((1, 8, 6, 6), 4, 1e-5, True),
        "function_body_gn_rank3": ((2, 12, 10), 3, 1e-6, False),
        "function_body_gn_g1": ((1, 6, 4, 4), 1, 1e-5, True),
    }
    for name, (shape, groups, eps, silu) in cases.items():
        for opset in (18, 21):
            path = os.path.join(HERE, f"{name}_opset{opset}.onnx")
            onnx.save(_inline_function_body(opset, shape, groups, eps, silu), path)
            written.append(path)
    return written


FAMILIES = {"torch": make_torch, "hf": make_hf, "keras": make_keras, "function": make_function}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(FAMILIES)
    for family in wanted:
        for path in FAMILIES[family]():
            print(f"{os.path.getsize(path):8d}  {os.path.relpath(path)}")
