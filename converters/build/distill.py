"""Quantization-aware distillation: fine-tune an int8-friendly net so that its int8 conversion matches the float source.

An elementwise PReLU (:func:`converters.build.prelu.branches`) stores each PReLU's input in one int8 tensor whose
256 levels span both signs; the rewrite that computed the layer twice stored each sign at its own scale, at ~3× the
multiply-adds. Converted post-training, the elementwise form loses about a bit of precision there (MTCNN: ~0.4 pt
of recall against float). A few epochs of training with TFLite's int8 arithmetic simulated let the weights settle
where those steps hurt least:

- weights fake-quantized per output channel, symmetric, 255 levels (what the converter does to CONV_2D,
  DEPTHWISE_CONV_2D and FULLY_CONNECTED weights);
- every tensor TFLite stores in int8 (each layer's output after its fused activation, each ADD, each head's
  logits and sigmoid) fake-quantized per tensor, asymmetric, 256 levels, at the min/max the converter's calibration
  records on the same calibration samples (observed once, before training; the conversion calibrates afresh);
- the loss is the mean squared distance to the float source net's own outputs on the training samples
  (distillation: no labels, and no data beyond what calibration already uses).

The simulation is near the converted model, not bit-exact: TFLite rescales with fixed-point multipliers, rounds
biases to int32 and rounds once where the simulation may round twice. One difference that looks larger is not: the
converter stores a PReLU's relu branch at the scale of the ADD that follows (a coarser grid than the branch's own),
but the other branch is exactly 0 wherever the relu branch is not, so the simulated ADD's rounding puts those values
on that same grid (simulating the tie changed no trained weight, measured). Where the simulation rounds a value to
the other neighbouring level than TFLite does, the two differ by a level from there on, and such differences
compound with depth: the simulated net is near its int8 model over MTCNN's few layers
(tests/test_converter_helpers.py) but, over MobileFaceNet's dozens, barely nearer than float is, which is why
fine-tuning helps it little.
The trained weights are then converted exactly as before (full-integer post-training quantization on the
calibration samples): the graph is unchanged, only its weights moved. Only linear layers train; the PReLU slopes in
the depthwise branches stay the source's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np


def _fake_quant_weight(kernel):
    """Per-output-channel symmetric int8 (narrow range) of a kernel whose last axis is the output channel."""
    import tensorflow as tf

    flat = tf.reshape(kernel, (-1, kernel.shape[-1]))
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(flat), axis=0), 1e-8))
    quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(flat, -bound, bound, num_bits=8,
                                                                        narrow_range=True)
    return tf.reshape(quantized, tf.shape(kernel))


def _layer_classes():
    """Keras layer subclasses whose kernels are fake-quantized in the forward pass (imported lazily: Keras)."""
    import keras
    from keras import ops

    class QuantConv2D(keras.layers.Conv2D):
        def convolution_op(self, inputs, kernel):
            return super().convolution_op(inputs, _fake_quant_weight(kernel))

    class QuantDense(keras.layers.Dense):
        def call(self, inputs, training=None):
            x = ops.matmul(inputs, _fake_quant_weight(self.kernel))
            if self.bias is not None:
                x = ops.add(x, self.bias)
            return self.activation(x) if self.activation is not None else x

    class QuantDepthwiseConv2D(keras.layers.DepthwiseConv2D):
        def call(self, inputs):
            kernel = self.kernel
            # TFLite quantizes a depthwise filter per channel × multiplier: flatten those into one last axis.
            folded = ops.reshape(kernel, (*kernel.shape[:2], 1, -1))
            quantized = ops.reshape(_fake_quant_weight(folded), kernel.shape)
            out = ops.depthwise_conv(inputs, quantized, strides=self.strides, padding=self.padding,
                                     dilation_rate=self.dilation_rate, data_format=self.data_format)
            if self.use_bias:
                out = ops.add(out, self.bias)
            return self.activation(out) if self.activation is not None else out

    class ActivationQuant(keras.layers.Layer):
        """Passes its input through until :attr:`bounds` is set, then fake-quantizes it to 256 levels there."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.bounds: Optional[tuple[float, float]] = None
            self.fixed: Optional[tuple[float, float]] = None

        def call(self, x):
            if self.bounds is None:
                return x
            import tensorflow as tf

            low, high = self.bounds
            return tf.quantization.fake_quant_with_min_max_args(x, min=low, max=high, num_bits=8)

    return QuantConv2D, QuantDense, QuantDepthwiseConv2D, ActivationQuant


class Layers:
    """The layer factory a net's ``build`` takes: plain Keras layers, and no quantization points."""

    def conv2d(self, *args, **kwargs):
        from keras import layers

        return layers.Conv2D(*args, **kwargs)

    def dense(self, *args, **kwargs):
        from keras import layers

        return layers.Dense(*args, **kwargs)

    def depthwise(self, *args, **kwargs):
        from keras import layers

        return layers.DepthwiseConv2D(*args, **kwargs)

    def stored(self, tensor, fixed: Optional[tuple[float, float]] = None):
        """Marks a tensor that TFLite stores in int8 (an op's output); plain layers leave it alone. ``fixed``: the
        range TFLite gives it whatever calibration sees (a sigmoid's output: [0, 255/256])."""
        return tensor


class QuantLayers(Layers):
    """The factory for training: fake-quantized kernels, and a quantization point on every stored tensor."""

    def __init__(self):
        self.conv_cls, self.dense_cls, self.depthwise_cls, self.point_cls = _layer_classes()
        self.points: list = []

    def conv2d(self, *args, **kwargs):
        return self.conv_cls(*args, **kwargs)

    def dense(self, *args, **kwargs):
        return self.dense_cls(*args, **kwargs)

    def depthwise(self, *args, **kwargs):
        return self.depthwise_cls(*args, **kwargs)

    def stored(self, tensor, fixed: Optional[tuple[float, float]] = None):
        point = self.point_cls()
        point.fixed = fixed
        self.points.append(point)
        return point(tensor)


PLAIN = Layers()


@dataclass(frozen=True)
class Schedule:
    """How long and how hard to fine-tune."""

    epochs: int
    batch: int
    learning_rate: float
    seed: int = 0


def observe_bounds(model, layers: QuantLayers, inputs: Sequence[np.ndarray]) -> None:
    """Set every quantization point to the min/max its tensor takes on ``inputs`` (each a batch), with 0 inside,
    as TFLite's calibration records them; points pass through while this runs."""
    import keras

    for point in layers.points:
        point.bounds = None
    probe = keras.Model(model.input, [point.output for point in layers.points])
    low = np.full(len(layers.points), np.inf)
    high = np.full(len(layers.points), -np.inf)
    for batch in inputs:
        for k, value in enumerate(probe(batch, training=False)):
            value = np.asarray(value)
            low[k] = min(low[k], float(value.min()))
            high[k] = max(high[k], float(value.max()))
    for point, lo, hi in zip(layers.points, low, high):
        point.bounds = point.fixed or (min(float(lo), 0.0), max(float(hi), 0.0, min(float(lo), 0.0) + 1e-6))


def fine_tune(model, layers: QuantLayers, inputs: np.ndarray, targets: list[np.ndarray],
              calibration: Sequence[np.ndarray], schedule: Schedule,
              progress: Optional[Callable[[int, float], None]] = None) -> list[float]:
    """Train ``model`` (built with ``layers``) towards ``targets`` (one array per output) on ``inputs`` with int8
    simulated; returns each epoch's loss. Only trainable weights move (the caller freezes what must not)."""
    import keras

    keras.utils.set_random_seed(schedule.seed)
    observe_bounds(model, layers, calibration)
    model.compile(optimizer=keras.optimizers.Adam(schedule.learning_rate), loss=["mse"] * len(targets))
    history = []
    for epoch in range(schedule.epochs):
        result = model.fit(inputs, targets, batch_size=schedule.batch, epochs=1, shuffle=True, verbose=0)
        history.append(float(result.history["loss"][-1]))
        if progress is not None:
            progress(epoch, history[-1])
    return history
