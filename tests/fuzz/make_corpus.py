#!/usr/bin/env python3
"""Writes the seed corpus of the safetensors fuzz target (tests/fuzz/corpus/).

Plain Python 3 (no PyTorch, no numpy): the files are built byte by byte, so broken ones
can be as broken as needed. Valid files hold the state dicts of the modules the fuzz target
loads (every module of tests/registry.hpp in its option sets: MODULES below) in every dtype,
masks in every mask dtype, prefixes and edge shapes. Broken files are one malformation each,
named after it.

    python3 tests/fuzz/make_corpus.py      # rewrites tests/fuzz/corpus/
"""
import json
import math
import os
import random
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")

SIZES = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "BOOL": 1, "U8": 1, "I32": 4, "I64": 8}

def linear(name, out, inp, bias=True):
    d = {name + "weight": [out, inp]}
    if bias:
        d[name + "bias"] = [out]
    return d


def mha(prefix=""):
    return {prefix + "in_proj_weight": [24, 8], prefix + "in_proj_bias": [24],
            prefix + "out_proj.weight": [8, 8], prefix + "out_proj.bias": [8]}


def norm(name):
    return {name + "weight": [8], name + "bias": [8]}


# The modules of tests/registry.hpp in its option sets (the fuzz target loads every file into
# each of them), and the cross-attention MultiheadAttention the target adds.
MODULES = {
    "self_attention": {**linear("query.", 8, 8), **linear("key.", 8, 8), **linear("value.", 8, 8)},
    "mha_torch": mha(),
    "mha_separate": {**linear("q.", 8, 8), **linear("k.", 8, 8), **linear("v.", 8, 8), **linear("out.", 8, 8)},
    "mha_mobilevit": {**linear("qkv_proj.", 24, 8), **linear("out_proj.", 8, 8)},
    "mha_no_bias": {"in_proj_weight": [24, 8], "out_proj.weight": [8, 8]},
    "mha_kdim_vdim_bias_kv": {"q_proj_weight": [8, 8], "k_proj_weight": [8, 4], "v_proj_weight": [8, 6],
                              "in_proj_bias": [24], "bias_k": [1, 1, 8], "bias_v": [1, 1, 8],
                              "out_proj.weight": [8, 8], "out_proj.bias": [8]},
    "talking_heads": {**linear("qkv.", 24, 8), **linear("proj_l.", 2, 2), **linear("proj_w.", 2, 2),
                      **linear("proj.", 8, 8)},
    "attention_block": {**mha("mha."), **norm("norm.")},
    "mobilevit_encoder_layer": {**norm("pre_norm_mha.0."), **linear("pre_norm_mha.1.qkv_proj.", 24, 8),
                                **linear("pre_norm_mha.1.out_proj.", 8, 8), **norm("pre_norm_ffn.0."),
                                **linear("pre_norm_ffn.1.", 16, 8), **linear("pre_norm_ffn.4.", 8, 16)},
    "transformer_encoder_layer": {**mha("self_attn."), **linear("linear1.", 16, 8), **linear("linear2.", 8, 16),
                                  **norm("norm1."), **norm("norm2.")},
    "transformer_decoder_layer": {**mha("self_attn."), **mha("multihead_attn."), **linear("linear1.", 16, 8),
                                  **linear("linear2.", 8, 16), **norm("norm1."), **norm("norm2."), **norm("norm3.")},
    "gqa": {**linear("q_proj.", 16, 8, False), **linear("k_proj.", 8, 8, False), **linear("v_proj.", 8, 8, False),
            **linear("o_proj.", 8, 16, False)},
    "gqa_multi_query_qkv_bias": {**linear("q_proj.", 16, 8), **linear("k_proj.", 4, 8), **linear("v_proj.", 4, 8),
                                 **linear("o_proj.", 8, 16, False), "sinks": [4]},
    "linear": linear("", 8, 8),
    "layer_norm": norm(""),
}

def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def encode(dtype, values):
    if dtype == "F32":
        return struct.pack("<%df" % len(values), *values)
    if dtype == "F64":
        return struct.pack("<%dd" % len(values), *values)
    if dtype == "F16":
        return struct.pack("<%de" % len(values), *values)
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in values)  # truncated float32
    if dtype in ("BOOL", "U8"):
        return bytes(int(v) & 0xFF for v in values)
    if dtype == "I32":
        return struct.pack("<%di" % len(values), *[int(v) for v in values])
    if dtype == "I64":
        return struct.pack("<%dq" % len(values), *[int(v) for v in values])
    raise ValueError(dtype)


def build(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, values or raw bytes). Returns the file bytes."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, values in tensors:
        raw = values if isinstance(values, bytes) else encode(dtype, values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def raw_file(header_text, data=b"", size=None):
    """A file with the given header text (bytes or str) and data; size overrides the length field."""
    if isinstance(header_text, str):
        header_text = header_text.encode()
    n = len(header_text) if size is None else size
    return struct.pack("<Q", n) + header_text + data


def module_tensors(params, dtype, rng, prefix=""):
    out = []
    for name, shape in params.items():
        values = [rng.uniform(-0.5, 0.5) for _ in range(numel(shape))]
        out.append((prefix + name, dtype, shape, values))
    return out


def main():
    rng = random.Random(5)
    files = {}

    # --- valid: every module, every float dtype -------------------------------------
    for module, params in MODULES.items():
        for dtype in ("F32", "F64", "F16", "BF16"):
            files["valid_%s_%s" % (module, dtype.lower())] = build(module_tensors(params, dtype, rng))
    files["valid_prefix_p_self_attention"] = build(module_tensors(MODULES["self_attention"], "F32", rng, "p."))
    files["valid_prefix_blocks_encoder_layer"] = build(
        module_tensors(MODULES["mobilevit_encoder_layer"], "F32", rng, "blocks.0.attn.")
        + module_tensors(MODULES["talking_heads"], "F16", rng, "blocks.1.attn."),
        metadata={"format": "pt"})
    mixed = module_tensors(MODULES["mha_torch"], "F32", rng)
    mixed[0] = (mixed[0][0], "BF16", mixed[0][2], mixed[0][3])
    mixed[1] = (mixed[1][0], "F64", mixed[1][2], mixed[1][3])
    files["valid_mha_mixed_dtypes"] = build(mixed)
    specials = module_tensors(MODULES["self_attention"], "F32", rng)
    specials[0] = (specials[0][0], "F32", [8, 8], [math.nan, math.inf, -math.inf, 1e38] * 16)
    files["valid_self_attention_nan_inf"] = build(specials)
    files["valid_self_attention_huge_weights"] = build(
        [(n, "F32", s, [3e38 * (1 if i % 2 else -1) for i in range(numel(s))])
         for n, s in MODULES["self_attention"].items()])
    # Masks and integers in every integer dtype, edge shapes.
    files["valid_masks_every_int_dtype"] = build([
        ("key_padding_mask", "BOOL", [2, 5], [i % 3 == 0 for i in range(10)]),
        ("attn_mask_u8", "U8", [5, 5], [i % 2 for i in range(25)]),
        ("ids_i32", "I32", [3], [-1, 0, 2 ** 31 - 1]),
        ("ids_i64", "I64", [2, 2], [-2 ** 63, 2 ** 63 - 1, 0, 7]),
    ], metadata={"note": "masks"})
    files["valid_edge_shapes"] = build([
        ("scalar", "F32", [], [1.5]),
        ("empty", "F32", [0], b""),
        ("empty2d", "F64", [3, 0], b""),
        ("one", "BF16", [1, 1, 1], [2.0]),
        ("half_specials", "F16", [6], [0.0, -0.0, 65504.0, 6e-8, math.inf, math.nan]),
    ])
    files["valid_empty_header"] = raw_file("{}")
    files["valid_only_metadata"] = build([], metadata={"a": "b"})
    files["valid_unpadded_header"] = build(module_tensors(MODULES["self_attention"], "F32", rng), pad=False)
    files["valid_extra_data_at_end"] = build(module_tensors(MODULES["self_attention"], "F32", rng)) + b"\0" * 16

    # --- valid files with module-level problems (loading must reject) -----------------
    wrong = module_tensors(MODULES["mha_torch"], "F32", rng)
    wrong[0] = ("in_proj_weight", "F32", [8, 24], wrong[0][3])
    files["load_misshaped_in_proj"] = build(wrong)
    files["load_missing_bias"] = build(module_tensors(MODULES["self_attention"], "F32", rng)[:-1])
    files["load_unexpected_key"] = build(module_tensors(MODULES["self_attention"], "F32", rng)
                                         + [("extra.weight", "F32", [2], [1.0, 2.0])])
    files["load_mixed_layouts"] = build(module_tensors(MODULES["mha_torch"], "F32", rng)
                                        + module_tensors(MODULES["mha_mobilevit"], "F32", rng)[:2])
    files["load_int_weights"] = build([(n, "I32", s, [1] * numel(s)) for n, s in MODULES["self_attention"].items()])

    # --- broken files: one malformation each ------------------------------------------
    good = build(module_tensors(MODULES["self_attention"], "F32", rng))
    files["bad_empty_file"] = b""
    files["bad_short_file"] = b"\x10\0\0"
    files["bad_header_size_past_end"] = struct.pack("<Q", 1000) + b"{}"
    files["bad_header_size_huge"] = struct.pack("<Q", 2 ** 63 + 5) + b"{}"
    files["bad_header_size_over_limit"] = struct.pack("<Q", 100 * 1000 * 1000 + 1) + b"{}"
    files["bad_header_not_json"] = raw_file("{not json")
    files["bad_header_truncated"] = good[:8 + 20]
    files["bad_header_array"] = raw_file("[1, 2, 3]")
    files["bad_header_number"] = raw_file("42")
    files["bad_header_invalid_utf8"] = raw_file(b'{"\xff\xfe":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_header_deep_nesting"] = raw_file("[" * 5000 + "]" * 5000)
    files["bad_header_deep_nesting_object"] = raw_file('{"a":' * 3000 + "1" + "}" * 3000)
    files["bad_entry_not_object"] = raw_file('{"w": 3}')
    files["bad_entry_missing_dtype"] = raw_file('{"w":{"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_entry_missing_shape"] = raw_file('{"w":{"dtype":"F32","data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_entry_missing_offsets"] = raw_file('{"w":{"dtype":"F32","shape":[1]}}', b"\0" * 4)
    files["bad_dtype_unknown"] = raw_file('{"w":{"dtype":"F8","shape":[4],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_dtype_not_string"] = raw_file('{"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_shape_negative"] = raw_file('{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_shape_float"] = raw_file('{"w":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_shape_not_array"] = raw_file('{"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_shape_huge"] = raw_file('{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_shape_over_index"] = raw_file('{"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_shape_huge_times_zero"] = raw_file(
        '{"w":{"dtype":"F32","shape":[4611686018427387904,3,0],"data_offsets":[0,0]}}')
    files["bad_shape_u64_overflow_bytes"] = raw_file(
        '{"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}}', b"\0" * 8)
    files["bad_offsets_reversed"] = raw_file('{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}', b"\0" * 4)
    files["bad_offsets_past_end"] = raw_file('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', b"\0" * 4)
    files["bad_offsets_size_mismatch"] = raw_file('{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"\0" * 8)
    files["bad_offsets_three"] = raw_file('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}', b"\0" * 8)
    files["bad_offsets_negative"] = raw_file('{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', b"\0" * 4)
    files["bad_offsets_huge"] = raw_file(
        '{"w":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551616]}}', b"\0" * 4)
    files["bad_overlap"] = raw_file('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                    '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', b"\0" * 12)
    files["bad_duplicate_name"] = raw_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                           '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8)
    files["bad_metadata_not_object"] = raw_file('{"__metadata__":[1]}')
    files["bad_metadata_value_number"] = raw_file('{"__metadata__":{"a":1}}')
    files["bad_metadata_as_tensor"] = raw_file(
        '{"__metadata__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    files["bad_trailing_json"] = raw_file('{} {}')
    files["bad_nul_in_header"] = raw_file(b'{}\0\0\0\0\0\0')

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for name, data in sorted(files.items()):
        with open(os.path.join(OUT, name + ".safetensors"), "wb") as f:
            f.write(data)
    print("wrote %d files to %s" % (len(files), OUT))


if __name__ == "__main__":
    main()
