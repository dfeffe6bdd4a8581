"""ONNX models of compare.py's workloads for ONNX Runtime (float32, fixed shapes).

Built with Debian's python3-onnx (1.12: opset 17, IR version 8). Weights are initializers taken
from the PyTorch module's state_dict (as numpy arrays), so ORT computes with the same numbers as
PyTorch and attn. Gemm keeps PyTorch's (out, in) weight layout (transB = 1); ORT prepacks
constant Gemm weights when it creates the session.

- linear_model: nn.Linear as one Gemm (x reshaped to 2-D around it when it has more dims).
- mha_model: nn.MultiheadAttention(batch_first=True) self-attention: Gemm (fused q/k/v projection,
  in_proj_weight and in_proj_bias) -> Split -> com.microsoft MultiHeadAttention -> Gemm (out_proj).
- core_model: the attention core alone, com.microsoft MultiHeadAttention on q, k, v laid out as
  (B, L, H*D) (ORT splits the heads inside the node; no mask, no bias, scale 1/sqrt(D)). ORT's CPU
  kernel runs MlasFlashAttention on it.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17         # the highest of onnx 1.12
IR_VERSION = 8     # onnx 1.12's; ORT 1.30 reads it
MS_DOMAIN = "com.microsoft"


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _model(name, nodes, inputs, output_shape, initializers):
    """A checked model whose graph reads `inputs` ({name: shape}) and writes `output`."""
    graph = helper.make_graph(nodes, name, [_value(n, s) for n, s in inputs.items()],
                              [_value("output", output_shape)], initializer=initializers)
    model = helper.make_model(graph, producer_name="attn bench/ort/onnx_models.py",
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)  # skips the com.microsoft nodes, checks the rest
    return model


class _Graph:
    """Nodes and initializers being collected; names are made unique by a counter."""

    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def name(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem, array):
        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, n_out=1, out=None, **attrs):
        outs = [out] if out else [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def reshape(self, x, shape, out=None):
        return self.op("Reshape", [x, self.const("shape", np.array(shape, dtype=np.int64))], out=out)

    def linear(self, x, shape, weight, bias, out=None):
        """x (..., K) times weight (N, K) transposed, plus bias (N) if given: one Gemm on x as
        (rows, K), with Reshapes (no copies in ORT) when x has other than 2 dims."""
        rows, n = int(np.prod(shape[:-1])), weight.shape[0]
        flat = x if len(shape) == 2 else self.reshape(x, (rows, shape[-1]))
        args = [flat, self.const("weight", weight)] + ([self.const("bias", bias)] if bias is not None else [])
        two_d = len(shape) == 2
        y = self.op("Gemm", args, out=out if two_d else None, transB=1)
        return y if two_d else self.reshape(y, (*shape[:-1], n), out=out)

    def attention(self, q, k, v, heads, out=None):
        return self.op("MultiHeadAttention", [q, k, v], out=out, domain=MS_DOMAIN, num_heads=heads)


def linear_model(state, x_shape):
    """nn.Linear: state {weight (N, K), bias (N) or none}; input x (..., K), output (..., N)."""
    g = _Graph()
    g.linear("x", x_shape, state["weight"], state.get("bias"), out="output")
    return _model("linear", g.nodes, {"x": x_shape}, (*x_shape[:-1], state["weight"].shape[0]), g.initializers)


def mha_model(state, query_shape, heads):
    """nn.MultiheadAttention(E, heads, batch_first=True) self-attention (in_proj_weight (3E, E),
    in_proj_bias, out_proj.weight, out_proj.bias); input query (B, N, E), output (B, N, E)."""
    b, n, e = query_shape
    g = _Graph()
    qkv = g.linear("query", query_shape, state["in_proj_weight"], state["in_proj_bias"])
    q, k, v = g.op("Split", [qkv, g.const("split", np.array([e, e, e], dtype=np.int64))], n_out=3, axis=2)
    ctx = g.attention(q, k, v, heads)
    g.linear(ctx, query_shape, state["out_proj.weight"], state["out_proj.bias"], out="output")
    return _model("multi_head_attention", g.nodes, {"query": query_shape}, query_shape, g.initializers)


def core_model(query_shape, key_shape, value_shape, heads):
    """The attention core on query (B, L, H*D), key (B, S, H*D), value (B, S, H*Dv) (heads side by
    side in the last dim); output (B, L, H*Dv)."""
    g = _Graph()
    g.attention("query", "key", "value", heads, out="output")
    inputs = {"query": query_shape, "key": key_shape, "value": value_shape}
    return _model("attention_core", g.nodes, inputs, (*query_shape[:-1], value_shape[-1]), g.initializers)


def save(model, path):
    onnx.save(model, str(path))
