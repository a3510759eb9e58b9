"""Trainable fp32 weights back from an exported (int8) ONNX file: the rebuilt net reads crops as the file
does, in eval mode and, thanks to BatchNorm re-inserted from data statistics, in train mode too."""

from __future__ import annotations

import numpy as np
import torch

from inference.model import EmotionModel
from inference.resources import default_model_path
from inference.training.data import PUBLIC, TRAIN
from inference.training.recover import architecture_of, read_exported_weights, recover_net


def normalised(fer_data, rows, model: EmotionModel) -> np.ndarray:
    return model.preprocess(fer_data.images[rows])


def test_the_rebuilt_net_reads_crops_as_the_shipped_file_does(fer_data):
    path = default_model_path()
    model = EmotionModel(path)
    weights = read_exported_weights(path)
    assert architecture_of(weights)["depths"] and set(weights.heads) >= {
        "probabilities",
        "ferplus_probabilities",
    }
    calibration = normalised(fer_data, fer_data.split(TRAIN)[:1024], model)
    net, _architecture, temperatures = recover_net(path, calibration)
    crops = normalised(fer_data, fer_data.split(PUBLIC)[:256], model)
    with torch.no_grad():
        fer, ferplus = net.eval()(torch.from_numpy(crops))
    outputs = dict(zip(["probabilities", "ferplus_probabilities"], (fer, ferplus), strict=True))
    for name, logits in outputs.items():
        ours = torch.softmax(logits / temperatures[name], 1).numpy()
        theirs = model.session.run([name], {model.input_name: crops})[0]
        assert (ours.argmax(1) == theirs.argmax(1)).mean() > 0.95  # int8 activations vs fp32: rare flips
        assert np.abs(ours - theirs).mean() < 0.01
    # BatchNorm starts as the identity (plus the folded bias) on batches of real crops, in train mode too
    net.train()
    net.drop.p = 0.0
    with torch.no_grad():
        train_fer, _ = net(torch.from_numpy(crops))
    assert torch.corrcoef(torch.stack([train_fer.flatten(), fer.flatten()]))[0, 1] > 0.99
