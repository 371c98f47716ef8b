#!/usr/bin/env python3
"""A tiny but real 3D ONNX model, for fracmap's Rust tests of ONNX Runtime.

    make_tiny_onnx.py OUT.onnx

Shaped like fracmap's segmentation models: input "volume", float32 [N, 1, D, H, W]; output
"probability", float32 [N, 1, D, H, W], on the input's grid. N, D, H and W are dynamic.

The graph: Conv (3x3x3 kernel, one input and one output channel, padding 1, stride 1), then
Sigmoid. Kernel weight [kz, ky, kx] = (9 kz + 3 ky + kx + 1) / 378, so the 27 weights are
distinct and sum to 1; bias -0.5. ONNX's Conv is a cross-correlation (the kernel is not
flipped). server/tests/runtime_model.rs recomputes this model by hand: keep the two in step.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # what ONNX Runtime 1.31 reads without complaint; opset 17 needs IR >= 8


def tiny_conv_sigmoid() -> onnx.ModelProto:
    kz, ky, kx = np.meshgrid(np.arange(3), np.arange(3), np.arange(3), indexing="ij")
    weight = ((9 * kz + 3 * ky + kx + 1) / 378.0).astype(np.float32).reshape(1, 1, 3, 3, 3)
    bias = np.array([-0.5], dtype=np.float32)
    dims = ["batch", 1, "depth", "height", "width"]
    graph = helper.make_graph(
        nodes=[
            helper.make_node(
                "Conv", ["volume", "weight", "bias"], ["logit"], kernel_shape=[3, 3, 3], pads=[1] * 6, strides=[1] * 3
            ),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        name="tiny_conv_sigmoid",
        inputs=[helper.make_tensor_value_info("volume", TensorProto.FLOAT, dims)],
        outputs=[helper.make_tensor_value_info("probability", TensorProto.FLOAT, dims)],
        initializer=[numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fracmap scripts/py/make_tiny_onnx.py",
        doc_string=__doc__.strip().splitlines()[0],
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT.onnx")
    onnx.save(tiny_conv_sigmoid(), sys.argv[1])


if __name__ == "__main__":
    main()
