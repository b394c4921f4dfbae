"""fp16 conversion clean-up: a graph that defines a name twice does not load."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from reaudio.export.fp16 import dedupe_nodes


def graph_with_a_repeated_cast():
    """The converter's pattern: one tensor feeds two kept-fp32 nodes, each gets 'the' Cast."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [
        helper.make_node("Relu", ["x_cast"], ["r"], name="relu"),  # consumer placed before its producer
        helper.make_node("Cast", ["x"], ["x_cast"], name="x_cast_node", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["x"], ["x_cast"], name="x_cast_node", to=TensorProto.FLOAT),
        helper.make_node("Add", ["r", "x_cast"], ["y"], name="relu"),  # clashing name, different node
    ]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])


def test_repeated_cast_is_dropped_and_the_graph_loads():
    model = graph_with_a_repeated_cast()
    assert dedupe_nodes(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["Cast", "Relu", "Add"]
    assert len({n.name for n in model.graph.node}) == 3
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0) + x)


def test_a_clean_graph_is_left_alone():
    model = graph_with_a_repeated_cast()
    del model.graph.node[2]
    model.graph.node[2].name = "add"
    before = model.SerializeToString()
    assert dedupe_nodes(model.graph) == 0
    assert model.SerializeToString() == before
