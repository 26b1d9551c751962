"""`train_on_batch` on a Distiller does not trace the models again on every call."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import mlp

from keras_kdcap import ATS, ISATS, Distiller, FixedTemperature


@pytest.mark.parametrize(
    "policy", [FixedTemperature(4.0), ATS(4.0, 2.0), ISATS(num_candidates=8)], ids=str
)
def test_every_layer_is_built_after_compile_and_one_step(policy, data):
    # Keras's train_on_batch runs a symbolic pass over the whole model on every
    # call while any layer is unbuilt; the policy is never called as a layer.
    x, y = data
    distiller = Distiller(mlp(16, seed=1), mlp(8, seed=2))
    distiller.compile("sgd", policy=policy)
    distiller.train_on_batch(x[:16], y[:16])
    unbuilt = [layer.name for layer in distiller._flatten_layers() if not layer.built]
    assert unbuilt == []
    symbolic = []
    student_call = distiller.student.call

    def recording(inputs, *args, **kwargs):
        symbolic.append(isinstance(inputs, keras.KerasTensor))
        return student_call(inputs, *args, **kwargs)

    distiller.student.call = recording
    loss = distiller.train_on_batch(x[:16], y[:16], return_dict=True)["loss"]
    assert not any(symbolic) and np.isfinite(loss)


def test_a_policy_with_its_own_build_is_refused_unless_built(data):
    class Built(FixedTemperature):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    x, y = data
    distiller = Distiller(mlp(16, seed=1), mlp(8, seed=2))
    with pytest.raises(TypeError, match=r"Built defines `build`.*policy.build\(\(None"):
        distiller.compile("sgd", policy=Built(4.0))
    policy = Built(4.0)
    policy.build((None, 5))
    distiller.compile("sgd", policy=policy)
    assert distiller.train_on_batch(x[:16], y[:16], return_dict=True)["kd_loss"] > 0
