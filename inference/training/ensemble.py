"""Merge member models into one ONNX graph that averages their probabilities.

Two independently trained CNNs averaged are reliably more accurate than either (different seeds
and widths make different mistakes), and int8 made the members cheap enough to run both within the
one-core budget. The merged graph keeps the contract: one `input`, `probabilities` [N,7] and
`ferplus_probabilities` [N,8].

The command that merges trained members and measures the result is merge_members.py (it needs
pipeline.finalize, which itself builds ensembles with this module).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import onnx
from onnx import helper

from .data import TRAIN, load_data
from .export import calibration_batch, quantize_int8

OUTPUTS = ("probabilities", "ferplus_probabilities")


def merge_average(paths: list[str | Path], out: str | Path) -> Path:
    """Average the outputs of same-signature member graphs (fp32) into one model."""
    members = [onnx.load(str(p)) for p in paths]
    base = members[0]
    nodes, inits = [], []
    for i, m in enumerate(members):
        g = m.graph
        ren = {o.name: f"m{i}/{o.name}" for o in g.output}

        def rn(name: str, i: int = i, ren: dict[str, str] = ren) -> str:
            if name == "input" or name == "":
                return name
            return ren.get(name, f"m{i}/{name}")

        for init in g.initializer:
            t = copy.deepcopy(init)
            t.name = rn(init.name)
            inits.append(t)
        for n in g.node:
            n2 = copy.deepcopy(n)
            n2.name = f"m{i}/{n.name}"
            n2.input[:] = [rn(x) for x in n.input]
            n2.output[:] = [rn(x) for x in n.output]
            nodes.append(n2)
    k = len(members)
    inits.append(helper.make_tensor("ens/weight", onnx.TensorProto.FLOAT, [], [1.0 / k]))
    for o in OUTPUTS:
        acc = f"m0/{o}"
        for i in range(1, k):
            nxt = f"ens/{o}_sum{i}"
            nodes.append(helper.make_node("Add", [acc, f"m{i}/{o}"], [nxt], name=f"ens/add_{o}{i}"))
            acc = nxt
        nodes.append(helper.make_node("Mul", [acc, "ens/weight"], [o], name=f"ens/mean_{o}"))
    graph = helper.make_graph(
        nodes, "emotion_ensemble", list(base.graph.input), list(base.graph.output), inits
    )
    model = helper.make_model(graph, opset_imports=list(base.opset_import))
    model.ir_version = base.ir_version
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return Path(out)


def combine_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for card/metadata: member 0's fields plus per-member records."""
    s = copy.deepcopy(summaries[0])
    s["params"] = sum(m["params"] for m in summaries)
    s["members"] = [
        {
            k: m.get(k)
            for k in (
                "epoch",
                "public_fer_acc",
                "public_ferplus_acc",
                "epochs_run",
                "train_seconds",
                "params",
                "temperature_fer",
            )
        }
        | {"teacher_public_fer_acc": m.get("teacher", {}).get("public_fer_acc")}
        for m in summaries
    ]
    s["train_seconds"] = sum(m["train_seconds"] for m in summaries) + sum(
        m.get("teacher", {}).get("train_seconds", 0) for m in summaries
    )
    return s


def build(
    member_files: list[tuple[Path, dict[str, Any]]],
    cfg: dict[str, Any],
    out: Path,
    data_path: str | None,
    work: Path,
) -> dict[str, Any]:
    """Merge fp32 members, quantize per cfg (calibrated on Training rows), return summary."""

    summary = combine_summaries([s for _, s in member_files])
    merged = work / "ensemble.fp32.onnx"
    merge_average([p for p, _ in member_files], merged)
    if cfg["export"].get("quantize") == "int8":
        data = load_data(data_path)
        calib = calibration_batch(data.images, data.split(TRAIN), cfg, summary["normalization"])
        quantize_int8(merged, out, calib)
    else:
        out.write_bytes(merged.read_bytes())
    return summary
