"""python -m tinygrad_gpt.trace: a golden test of the forward listing (module, op, shape,
inputs; no floats), the backward order, the DOT graph, --op, and clean errors; the formula
shown for each op; and that every gradient the trace lists or prints, on every edge of the
whole trace (tied embedding, fused and composed attention), is the one backward computed."""
import re

import numpy as np
import pytest

import tensor.functional as F
from runs import make_run
from tensor import observe_ops
from tinygrad_gpt import trace as tr
from tinygrad_gpt import trace_views as tv
from tinygrad_gpt.op_cases import CASES, formula

# The forward listing of the default tiny GPT on "To be, or not" (12 tokens in).
GOLDEN_FORWARD = """\
forward: 46 ops, module.op and output shape, <- where the inputs came from
  [ 0] token_embedding.embedding          (1, 12, 16)     <- weight
  [ 1] position_embedding.embedding       (12, 16)        <- weight
  [ 2] GPT.add                            (1, 12, 16)     <- [0], [1]
  [ 3] blocks.0.ln_attn.layer_norm        (1, 12, 16)     <- [2], weight, bias
  [ 4] blocks.0.attn.query.linear         (1, 12, 16)     <- [3], weight, bias
  [ 5] blocks.0.attn.reshape              (1, 12, 2, 8)   <- [4]
  [ 6] blocks.0.attn.transpose            (1, 2, 12, 8)   <- [5]
  [ 7] blocks.0.attn.key.linear           (1, 12, 16)     <- [3], weight, bias
  [ 8] blocks.0.attn.reshape              (1, 12, 2, 8)   <- [7]
  [ 9] blocks.0.attn.transpose            (1, 2, 12, 8)   <- [8]
  [10] blocks.0.attn.value.linear         (1, 12, 16)     <- [3], weight, bias
  [11] blocks.0.attn.reshape              (1, 12, 2, 8)   <- [10]
  [12] blocks.0.attn.transpose            (1, 2, 12, 8)   <- [11]
  [13] blocks.0.attn.attention            (1, 2, 12, 8)   <- [6], [9], [12]
  [14] blocks.0.attn.transpose            (1, 12, 2, 8)   <- [13]
  [15] blocks.0.attn.reshape              (1, 12, 16)     <- [14]
  [16] blocks.0.attn.attn_out.linear      (1, 12, 16)     <- [15], weight, bias
  [17] blocks.0.add                       (1, 12, 16)     <- [2], [16]
  [18] blocks.0.ln_mlp.layer_norm         (1, 12, 16)     <- [17], weight, bias
  [19] blocks.0.mlp.mlp_in.linear         (1, 12, 64)     <- [18], weight, bias
  [20] blocks.0.mlp.gelu.gelu             (1, 12, 64)     <- [19]
  [21] blocks.0.mlp.mlp_out.linear        (1, 12, 16)     <- [20], weight, bias
  [22] blocks.0.add                       (1, 12, 16)     <- [17], [21]
  [23] blocks.1.ln_attn.layer_norm        (1, 12, 16)     <- [22], weight, bias
  [24] blocks.1.attn.query.linear         (1, 12, 16)     <- [23], weight, bias
  [25] blocks.1.attn.reshape              (1, 12, 2, 8)   <- [24]
  [26] blocks.1.attn.transpose            (1, 2, 12, 8)   <- [25]
  [27] blocks.1.attn.key.linear           (1, 12, 16)     <- [23], weight, bias
  [28] blocks.1.attn.reshape              (1, 12, 2, 8)   <- [27]
  [29] blocks.1.attn.transpose            (1, 2, 12, 8)   <- [28]
  [30] blocks.1.attn.value.linear         (1, 12, 16)     <- [23], weight, bias
  [31] blocks.1.attn.reshape              (1, 12, 2, 8)   <- [30]
  [32] blocks.1.attn.transpose            (1, 2, 12, 8)   <- [31]
  [33] blocks.1.attn.attention            (1, 2, 12, 8)   <- [26], [29], [32]
  [34] blocks.1.attn.transpose            (1, 12, 2, 8)   <- [33]
  [35] blocks.1.attn.reshape              (1, 12, 16)     <- [34]
  [36] blocks.1.attn.attn_out.linear      (1, 12, 16)     <- [35], weight, bias
  [37] blocks.1.add                       (1, 12, 16)     <- [22], [36]
  [38] blocks.1.ln_mlp.layer_norm         (1, 12, 16)     <- [37], weight, bias
  [39] blocks.1.mlp.mlp_in.linear         (1, 12, 64)     <- [38], weight, bias
  [40] blocks.1.mlp.gelu.gelu             (1, 12, 64)     <- [39]
  [41] blocks.1.mlp.mlp_out.linear        (1, 12, 16)     <- [40], weight, bias
  [42] blocks.1.add                       (1, 12, 16)     <- [37], [41]
  [43] ln_final.layer_norm                (1, 12, 16)     <- [42], weight, bias
  [44] GPT.linear                         (1, 12, 9)      <- [43], token_embedding.weight
  [45] GPT.cross_entropy                  ()              <- [44]
"""

# The order backward visits the ops (reverse topological order from the loss; the three
# attention inputs are visited q, then k, then v, each down to the shared layer_norm).
GOLDEN_BACKWARD = [45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 26, 25, 24, 29, 28, 27,
                   32, 31, 30, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 6, 5, 4, 9, 8, 7,
                   12, 11, 10, 3, 2, 0, 1]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tr.build_tiny(tr.DEFAULT_TEXT)
    return tr.trace(model, tok.encode(tr.DEFAULT_TEXT))


def run_cli(capsys, *args):
    code = tr.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_forward_listing_is_the_golden_one(tiny):
    assert "\n".join(tr.forward_lines(tiny)) + "\n" == GOLDEN_FORWARD


def test_backward_order_and_gradient_shapes(tiny):
    assert [r.index for r in tiny.backward] == GOLDEN_BACKWARD
    seen = set()
    for r in tiny.backward:                    # every op runs after every op that used it
        users = [u.index for u in tiny.ops if any(p is r.out for p in u.parents)]
        assert all(u in seen for u in users), (r.label, users)
        seen.add(r.index)
        assert r.dy.shape == r.out.shape
        for p, g in zip(r.parents, r.grads):
            assert g is None or g.shape == p.shape
    assert set(seen) == {r.index for r in tiny.ops}


def test_the_trace_does_not_change_the_gradients(tiny):
    model, tok = tr.build_tiny(tr.DEFAULT_TEXT)
    ids = np.asarray([tok.encode(tr.DEFAULT_TEXT)])
    _, loss = model(ids[:, :-1], targets=ids[:, 1:])
    loss.backward()
    assert loss.item() == pytest.approx(tiny.loss)
    for (name, p), (_, q) in zip(model.named_parameters(), tiny.params):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-5, atol=1e-9, err_msg=name)


def test_composed_attention_shows_five_ops_and_restores_fused():
    model, tok = tr.build_tiny(tr.DEFAULT_TEXT)
    t = tr.trace(model, tok.encode(tr.DEFAULT_TEXT), composed=True)
    ops = [r.op for r in t.ops if r.module == "blocks.0.attn"]
    assert ops[6:12] == ["transpose", "matmul", "mul", "masked_fill", "softmax", "matmul"]
    assert "attention" not in {r.op for r in t.ops}
    assert all(block.attn.fused for block in model.blocks)


def parse_dot(text):
    """A small DOT reader: (graph kind, {node id: attributes}, [(src, dst)])."""
    kind = re.match(r"\s*(digraph|graph)\s+\w*\s*\{", text)
    nodes, edges = {}, []
    for line in text.splitlines():
        edge = re.fullmatch(r"\s*(\w+)\s*->\s*(\w+)\s*;?", line)
        node = re.fullmatch(r"\s*(\w+)\s*\[(.*)\]\s*;?", line)
        if edge:
            edges.append(edge.groups())
        elif node and node.group(1) not in ("node", "edge", "graph"):
            nodes[node.group(1)] = node.group(2)
    return kind and kind.group(1), nodes, edges


def test_dot_is_a_digraph_with_one_node_per_op(tiny, tmp_path, capsys):
    kind, nodes, edges = parse_dot(tv.to_dot(tiny))
    assert kind == "digraph" and tv.to_dot(tiny).rstrip().endswith("}")
    op_nodes = [n for n in nodes if n.startswith("op")]
    leaf_nodes = [n for n in nodes if n.startswith("leaf")]
    assert len(op_nodes) == len(tiny.ops) == 46
    assert len(leaf_nodes) == len(tiny.params) == 36     # no constants with fused attention
    assert len(nodes) == len(op_nodes) + len(leaf_nodes)
    assert all(a in nodes and b in nodes for a, b in edges)
    assert len(edges) == sum(len(r.parents) for r in tiny.ops)
    assert 'label="[13] blocks.0.attn.attention\\n(1, 2, 12, 8)"' in nodes["op13"]
    code, out, _ = run_cli(capsys, "--dot", str(tmp_path / "g.dot"), "--composed")
    kind, nodes, edges = parse_dot((tmp_path / "g.dot").read_text())
    assert code == 0 and kind == "digraph" and "56 op nodes" in out
    assert len([n for n in nodes if n.startswith("op")]) == 56   # attention: 1 op -> 6 ops
    assert len([n for n in nodes if n.startswith("leaf")]) == 38  # + the 1/sqrt(hs) constants


def test_cli_prints_three_sections(capsys):
    code, out, _ = run_cli(capsys)
    assert code == 0
    assert out.splitlines()[0].startswith("GPT: 12 tokens in, loss ")
    assert "\n".join(tr.forward_lines(tr.trace(*_tiny_ids()))) in out
    assert "  [45] GPT.cross_entropy                  dy ()              |dy| 1.000e+00" in out
    assert re.search(r"^  blocks\.0\.attn\.key\.bias +\(16,\) ", out, re.M)


def _tiny_ids():
    model, tok = tr.build_tiny(tr.DEFAULT_TEXT)
    return model, tok.encode(tr.DEFAULT_TEXT)


@pytest.mark.parametrize("op, index, label, inputs", [
    ("softmax", 1, "[42] blocks.1.attn.softmax", ["x"]),
    ("layer_norm", 0, "[3] blocks.0.ln_attn.layer_norm", ["x", "weight", "bias"]),
    ("attention", 0, None, ["q", "k", "v"]),
    ("gelu", 1, "blocks.1.mlp.gelu.gelu", ["x"]),
])
def test_op_shows_inputs_output_and_gradients(capsys, op, index, label, inputs):
    args = ["--op", op, "--index", str(index)] + (["--composed"] if op == "softmax" else [])
    code, out, _ = run_cli(capsys, *args)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[1].startswith("op [") and (label is None or label in lines[1])
    assert lines[2].startswith("backward (") and "):" in lines[2]
    for name in inputs:
        assert re.search(rf"^  {name} ", out, re.M) and re.search(rf"^  d{name} +-> ", out, re.M)
    assert re.search(r"^output ", out, re.M) and re.search(r"^upstream dy .*\|dy\| ", out, re.M)


def test_formula_from_backprop_md_else_the_docstring(tmp_path):
    md = tmp_path / "backprop.md"
    md.write_text("intro\n**backward:** `softmax`: `dx = y * (dy - sum(dy * y))`\n"
                  "| `exp` | `y = exp(a)` | **backward:** `da = dy * y` | note |\n"
                  "**backward:** `scaled_dot_product_attention`: `dq = s dS @ k`\n")
    assert tv.backprop_formula("softmax", md) == ("dx = y * (dy - sum(dy * y))",
                                                  "docs/backprop.md")
    assert tv.backprop_formula("exp", md)[0] == "da = dy * y"
    assert tv.backprop_formula("attention", md)[0] == "dq = s dS @ k"
    # Not in the file: the docstring. F.gelu, F.layer_norm... are one-line dispatch
    # wrappers ("GELU (gelu.py)."), so the math line comes from the reference op in tensor/.
    for op, wrapper, reference in (
            ("gelu", F.gelu, F.reference_gelu),
            ("layer_norm", F.layer_norm, F.reference_layer_norm),
            ("cross_entropy", F.cross_entropy, F.reference_cross_entropy),
            ("attention", F.scaled_dot_product_attention, F.reference_attention)):
        text, where = tv.backprop_formula(op, tmp_path / "missing.md")
        assert reference.__module__ != "tensor.functional"
        assert where == f"the docstring of {reference.__module__}.{reference.__name__}"
        assert text == formula(reference) != formula(wrapper)
        assert re.match(r"d\w+ = ", text), (op, text)       # the backward half: "dx = ..."
    text, where = tv.backprop_formula("gelu", md)
    assert "dx = dy *" in text and where == "the docstring of tensor.gelu.gelu"
    assert tv.backprop_formula("exp", tmp_path / "missing.md") == (
        "da = dy * y", "the docstring of tensor.elementwise.exp")
    assert tv.backprop_formula("nope", md) == ("(no formula found)", "nowhere")


def test_docs_backprop_md_has_a_formula_for_every_op():
    """The real docs/backprop.md: one backward line for each op gradcheck knows, and so for
    every op a trace can show (fused and composed attention)."""
    for name, _, _ in CASES:
        text, where = tv.backprop_formula(name)
        assert where == "docs/backprop.md", name
        assert re.search(r"\bd\w+(\[\w+\])? = ", text), (name, text)    # "dx = ", "dW[j] = "
    lines = tv.BACKPROP_MD.read_text(encoding="utf-8").count("**backward:**")
    assert lines == len(CASES) == 35
    for composed in (False, True):
        t, _ = traced_with_independent_record(composed)
        for op in {r.op for r in t.ops}:
            assert tv.backprop_formula(op)[1] == "docs/backprop.md", op


# ----- the tracer is right for every op (its gradients are the engine's) --------------------


def traced_with_independent_record(composed):
    """The tracer's Trace of the tiny GPT, and what every backward returned, recorded by a
    second, independent hook: an observer that wraps each op's backward as the op is made
    (the tracer wraps that wrapper later) and keeps copies of the gradients it returns.
    -> (trace, {id(op output): (gradient per parent, copied when returned)})"""
    returned = {}

    def observe(out, parents):
        if out._backward is None:
            return
        backward, key = out._backward, id(out)

        def recorded(dy):
            grads = backward(dy)
            returned[key] = tuple(None if g is None else np.array(g, copy=True) for g in grads)
            return grads
        out._backward = recorded
    model, tok = tr.build_tiny(tr.DEFAULT_TEXT)
    with observe_ops(observe):
        t = tr.trace(model, tok.encode(tr.DEFAULT_TEXT), composed=composed)
    return t, returned


@pytest.fixture(scope="module", params=[False, True], ids=["fused", "composed"])
def recorded(request):
    return traced_with_independent_record(request.param)


def test_every_edge_lists_what_its_backward_returned(recorded):
    t, returned = recorded
    assert {id(r.out) for r in t.backward} == set(returned)   # every op backward ran
    for r in t.backward:
        assert len(r.grads) == len(r.parents), r.label
        for i, (p, g, independent) in enumerate(zip(r.parents, r.grads, returned[id(r.out)])):
            edge = f"{r.label} -> {t.source(p, r.module)} (input {i})"
            assert (g is None) == (not p.requires_grad), edge   # None only where not needed
            assert (independent is None) == (g is None), edge
            if g is not None:
                np.testing.assert_array_equal(g, independent, err_msg=edge)


def test_gradients_listed_for_a_tensor_sum_to_what_backward_accumulated(recorded):
    """For every parameter, the gradients the trace lists on its edges add up to .grad; for
    every op output, the gradients listed for it add up to the dy its own op received."""
    t, _ = recorded
    listed = {}                                     # id(tensor) -> [gradients, in visit order]
    for r in t.backward:
        for p, g in zip(r.parents, r.grads):
            if g is not None:
                listed.setdefault(id(p), []).append(g)
    for name, p in t.params:
        assert p.grad is not None and id(p) in listed, name
        total = listed[id(p)][0].astype(np.float64)
        for g in listed[id(p)][1:]:
            total = total + g
        np.testing.assert_allclose(total, p.grad, rtol=1e-5, atol=1e-9, err_msg=name)
    token = dict(t.params)["token_embedding.weight"]
    users = sorted(r.label for r in t.ops if any(p is token for p in r.parents))
    assert users == ["GPT.linear", "token_embedding.embedding"]        # tied: two edges
    assert len(listed[id(token)]) == 2
    for r in t.backward:
        if r.index == len(t.ops) - 1:                                  # the loss: seeded 1
            np.testing.assert_array_equal(r.dy, np.ones(()))
            continue
        parts = listed[id(r.out)]
        np.testing.assert_allclose(sum(parts[1:], parts[0].astype(np.float64)), r.dy,
                                   rtol=1e-5, atol=1e-9, err_msg=r.label)


def test_printed_backward_shows_every_edge_with_its_norm(recorded):
    t, returned = recorded
    lines = tr.backward_lines(t)[1:]
    assert len(lines) == len(t.backward)
    for line, r in zip(lines, t.backward):
        assert line.startswith(f"  [{r.index:2d}] {r.label} ")
        sent = re.findall(r"(\S+) (\d\.\d\de[+-]\d\d)(?:,|$)", line.split(" -> ", 1)[1])
        expected = [(t.source(p, r.module), f"{tv.norm(g):.2e}")
                    for p, g in zip(r.parents, returned[id(r.out)]) if g is not None]
        assert sent == expected, line
    params = {name: f"{tv.norm(p.grad):.3e}" for name, p in t.params}
    for line in tr.parameter_lines(t)[2:]:                  # name, shape, |grad|, ...
        name = line.split()[0]
        assert re.findall(r"\d\.\d{3}e[+-]\d\d", line)[0] == params.pop(name), line
    assert not params


def test_op_embedding_names_the_tied_weight_with_a_norm(capsys):
    code, out, _ = run_cli(capsys, "--op", "embedding")
    assert code == 0 and "not needed" not in out
    t, returned = traced_with_independent_record(composed=False)
    for args, label in ((["--op", "embedding"], "token_embedding.embedding"),
                        (["--op", "linear", "--index", "12"], "GPT.linear")):
        code, out, _ = run_cli(capsys, *args)
        assert code == 0 and f"] {label} " in out.splitlines()[1], out
        shown = re.search(r"^  dweight +-> token_embedding\.weight +\(9, 16\) +\|d\| (\S+)",
                          out, re.M)
        assert shown, out
        r = next(r for r in t.ops if r.label == label)
        g = returned[id(r.out)][[p.shape for p in r.parents].index((9, 16))]
        assert shown.group(1) == f"{tv.norm(g):.3e}"     # this op's part, not the total


def test_a_trained_run_is_traced(tmp_path, capsys):
    run = make_run(tmp_path / "run", text="To be, or not to be")
    code, out, err = run_cli(capsys, "--out_dir", str(run), "--text", "or not to be")
    assert code == 0, err
    assert out.startswith("GPT: 11 tokens in")
    assert "[ 0] token_embedding.embedding          (1, 11, 16)" in out
    bigram = make_run(tmp_path / "bigram", model="bigram", text="To be, or not to be")
    code, out, err = run_cli(capsys, "--out_dir", str(bigram), "--text", "to be")
    assert code == 0, err
    assert "[ 0] table.embedding" in out and "Bigram.cross_entropy" in out


@pytest.mark.parametrize("args, needle", [
    (["--text", ""], "empty"),
    (["--text", "a"], "at least two"),
    (["--op", "nope"], "no such op"),
    (["--op", "gelu", "--index", "2"], "0 to 1"),
    (["--out_dir", "/nonexistent/run"], "no checkpoint"),
    (["--text", "x" * 80], None),                           # tiny model grows its block
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, needle):
    code, out, err = run_cli(capsys, *args)
    if needle is None:
        assert code == 0
        return
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert needle in err and "Traceback" not in err


def test_unknown_characters_and_too_long_text_for_a_run(tmp_path, capsys):
    run = make_run(tmp_path / "run", text="To be, or not to be")
    for text, needle in (("XYZ", "not in the vocabulary"), ("to be " * 5, "at most 16")):
        code, _, err = run_cli(capsys, "--out_dir", str(run), "--text", text)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
