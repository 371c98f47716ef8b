#!/usr/bin/env python3
"""Checks exported ONNX models with the reference implementation of the ONNX standard.

    onnx_check.py MODEL.onnx [MODEL.onnx ...]

For each model:
1. onnx.checker.check_model(model, full_check=True): the graph, every node against its
   operator's schema at the imported opset, and strict shape inference against the shapes
   the model declares;
2. shape inference again (strict, with data propagation) on a copy whose graph outputs have
   their shapes removed, so that the output shapes reported are what ONNX derives from the
   input shape and the operators, not what the exporter wrote.

Prints one JSON object, by path: {"ir_version", "opset", "inputs": {name: shape},
"declared_outputs": {name: shape}, "inferred_outputs": {name: shape}, "ops": {op_type: count},
"initializers": count}. A shape is a list of ints (fixed axes), strings (named axes) and
nulls (unknown). Exits with the checker's message when a model fails.

Used by trainer/tests/onnx_parity.rs; by hand: `.venv/bin/python scripts/py/onnx_check.py models/vae/1/model.onnx`.
"""

import json
import sys
from collections import Counter

import onnx
from onnx import shape_inference


def shape_of(value_info):
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def check(path):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    for output in stripped.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = shape_inference.infer_shapes(stripped, check_type=True, strict_mode=True, data_prop=True)

    default_opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return {
        "ir_version": model.ir_version,
        "opset": default_opset[0] if default_opset else None,
        "inputs": {i.name: shape_of(i) for i in model.graph.input},
        "declared_outputs": {o.name: shape_of(o) for o in model.graph.output},
        "inferred_outputs": {o.name: shape_of(o) for o in inferred.graph.output},
        "ops": dict(Counter(node.op_type for node in model.graph.node)),
        "initializers": len(model.graph.initializer),
    }


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    report = {}
    for path in sys.argv[1:]:
        try:
            report[path] = check(path)
        except Exception as error:  # the checker's own exception types vary by version
            sys.exit(f"{path}: {type(error).__name__}: {error}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
