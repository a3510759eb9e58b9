"""Trainable weights back from an exported emotion ONNX file (int8 QDQ or fp32), for fine-tuning.

The shipped file is all that survived of an earlier GPU run, so a later run can start from it instead of from
scratch: each Conv's weight and bias are dequantized (per-channel int8 scale/zero point, int32 bias), the
heads are copied, and the temperatures read from the graph's Div constants. The export had BatchNorm folded
into the convolutions; `recover_net` puts a BatchNorm back after each Conv, initialised from the statistics
of real training crops so that, in train mode as in eval mode, it starts as the identity plus the folded
bias (BN(z) = gamma (z - mu) / sigma + beta with gamma = sigma, beta = mu + bias). Fine-tuning then keeps
BN's conditioning, and `ExportWrapper` folds it again on export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class ExportedWeights:
    """The float weights of an exported graph, in graph order."""

    convs: list[tuple[np.ndarray, np.ndarray]]  # (weight [out, in, 3, 3], bias [out]) per Conv
    strides: list[int]
    heads: dict[str, tuple[np.ndarray, np.ndarray]]  # output name -> (weight [k, d], bias [k])
    temperatures: dict[str, float]  # output name -> temperature of its softmax
    pools_before: list[bool]  # per Conv: a 2x2 MaxPool precedes it


def _dequantize(tensors: dict[str, np.ndarray], node: onnx.NodeProto) -> np.ndarray:
    quantized, scale = tensors[node.input[0]], tensors[node.input[1]]
    zero = tensors[node.input[2]] if len(node.input) > 2 else np.zeros_like(scale)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if scale.ndim == 1 and quantized.ndim > 1:
        shape = [1] * quantized.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((quantized.astype(np.float64) - zero.astype(np.float64)) * scale).astype(np.float32)


def read_exported_weights(path: str | Path) -> ExportedWeights:
    """Conv trunk, heads and temperatures of a file written by `export.export_onnx` (optionally int8)."""
    model = onnx.load(str(path))
    graph = model.graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            tensors[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {out: node for node in graph.node for out in node.output}

    def value(name: str) -> np.ndarray:
        if name in tensors:
            return tensors[name]
        node = producer[name]
        if node.op_type == "DequantizeLinear":
            return _dequantize(tensors, node)
        raise ValueError(f"cannot read weight {name} (made by {node.op_type})")

    convs, strides, pools_before = [], [], []
    pool_pending = False
    for node in graph.node:
        if node.op_type == "MaxPool":
            pool_pending = True
        elif node.op_type == "Conv":
            convs.append((value(node.input[1]), value(node.input[2])))
            stride = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1, 1])
            strides.append(int(stride[0]))
            pools_before.append(pool_pending)
            pool_pending = False
    heads: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    temperatures: dict[str, float] = {}
    for output in graph.output:
        softmax = producer[output.name]
        if softmax.op_type != "Softmax":
            raise ValueError(f"output {output.name} is not a Softmax")
        scaled = producer[softmax.input[0]]
        temperature = 1.0
        if scaled.op_type == "Div":
            temperature = float(value(scaled.input[1]))
            scaled = producer[scaled.input[0]]
        if scaled.op_type != "Gemm":
            raise ValueError(f"output {output.name}: expected Gemm (+Div) before Softmax: {scaled.op_type}")
        trans_b = next((a.i for a in scaled.attribute if a.name == "transB"), 0)
        weight = value(scaled.input[1])
        heads[output.name] = (weight if trans_b else weight.T, value(scaled.input[2]))
        temperatures[output.name] = temperature
    return ExportedWeights(convs, strides, heads, temperatures, pools_before)


def architecture_of(weights: ExportedWeights) -> dict:
    """The `model` config (widths, depths, stem_stride) that rebuilds the exported trunk."""
    widths, depths = [], []
    for index, ((weight, _bias), pooled) in enumerate(zip(weights.convs, weights.pools_before, strict=True)):
        if index == 0 or pooled:
            widths.append(int(weight.shape[0]))
            depths.append(0)
        depths[-1] += 1
    return {"widths": widths, "depths": depths, "stem_stride": weights.strides[0]}


def recover_net(path: str | Path, calibration: np.ndarray, dropout: float = 0.3):
    """An `EmotionNet` carrying the exported weights, BN re-inserted from `calibration` (normalised training
    crops float32 [N, 1, 48, 48]); returns (net, architecture config, {output: temperature})."""
    # torch is a training-only dependency (the `train` extra); reading the int8 file needs only onnx
    import torch

    from .model import ConvBNReLU, EmotionNet

    weights = read_exported_weights(path)
    architecture = architecture_of(weights)
    net = EmotionNet(
        architecture["widths"],
        architecture["depths"],
        dropout=dropout,
        stem_stride=architecture["stem_stride"],
        n_fer=len(weights.heads["probabilities"][1]),
        n_ferplus=len(weights.heads["ferplus_probabilities"][1]),
    )
    blocks = [module for module in net.features if isinstance(module, ConvBNReLU)]
    if len(blocks) != len(weights.convs):
        raise ValueError(f"{len(weights.convs)} convs in the file, {len(blocks)} in the rebuilt net")
    x = torch.from_numpy(np.ascontiguousarray(calibration, np.float32))
    net.eval()
    with torch.no_grad():
        convs = iter(weights.convs)
        for module in net.features:
            if isinstance(module, ConvBNReLU):
                conv, bn = module[0], module[1]
                weight, bias_array = next(convs)
                conv.weight.copy_(torch.from_numpy(weight.copy()))
                z = conv(x)  # pre-activation without bias: what BN sees
                mu = z.mean(dim=(0, 2, 3))
                var = z.var(dim=(0, 2, 3), unbiased=False)
                bias = torch.from_numpy(bias_array.copy())
                bn.running_mean.copy_(mu)
                bn.running_var.copy_(var)
                bn.weight.copy_(torch.sqrt(var + bn.eps))
                bn.bias.copy_(mu + bias)
                x = torch.relu(z + bias.view(1, -1, 1, 1))
            else:
                x = module(x)
        for head, name in ((net.fer_head, "probabilities"), (net.ferplus_head, "ferplus_probabilities")):
            weight, bias = weights.heads[name]
            head.weight.copy_(torch.from_numpy(weight.copy()))
            head.bias.copy_(torch.from_numpy(bias.copy()))
    return net, architecture, dict(weights.temperatures)
