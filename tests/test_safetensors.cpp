// safetensors reading and writing (the fixture format; issue-level hardening lives here too).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <fstream>

#include "support.hpp"

namespace {

using namespace attn_test;

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "attn_" + name + ".safetensors"; }

void write_bytes(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
  out << header << data;
}

void expect_rejected(const std::string& path, const char* what) {
  try {
    attn::io::SafetensorsFile f(path);
    ADD_FAILURE() << "accepted a malformed file: " << what;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what() << "\nlacks: " << what;
  }
}

TEST(Safetensors, RoundTripsFloatDoubleBoolAndMetadata) {
  const std::string path = temp_path("round_trip");
  Tensor<float> f({2, 3}, {1.5f, -2, 3, 4, 5, 6e-30f});
  Tensor<double> d({3}, {1e300, -0.0, 3.25});
  Tensor<bool> b({2, 2}, {true, false, false, true});
  attn::io::SafetensorsWriter w;
  w.add("f", f);
  w.add("d", d);
  w.add("mask", b);
  w.set_metadata("format", "pt");
  w.write(path);
  const attn::io::SafetensorsFile r(path);
  EXPECT_EQ(r.names(), (std::vector<std::string>{"f", "d", "mask"}));  // file order, not sorted
  EXPECT_EQ(r.metadata().at("format"), "pt");
  try {
    r.get<float>("mask");
    ADD_FAILURE() << "a BOOL tensor read as float";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("'mask' has dtype BOOL"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(AllClose(r.get<float>("f"), f, 0.0));
  EXPECT_TRUE(AllClose(r.get<double>("d"), d, 0.0));
  EXPECT_TRUE(AllClose(r.get<double>("f"), f, 0.0));  // converted to the requested type
  const Tensor<bool> rb = r.get_bool("mask");
  for (Index i = 0; i < 4; ++i) EXPECT_EQ(rb[i], b[i]);
  std::remove(path.c_str());
}

TEST(Safetensors, ModuleStateDictRoundTrip) {
  const std::string path = temp_path("module");
  attn::MobileViTEncoderLayer<float> enc(8, 4, 2);
  attn::io::SafetensorsWriter w;
  w.add(enc.state_dict(), "transformer.0.");
  w.write(path);
  attn::MobileViTEncoderLayer<float> other(8, 4, 2);
  auto dict = attn::io::SafetensorsFile(path).state_dict<float>("transformer.0.");
  other.load_state_dict(dict);
  const Tensor<float> x = random_tensor<float>({1, 3, 8}, 1);
  EXPECT_TRUE(AllClose(other.forward(x), enc.forward(x), 0.0));
  std::remove(path.c_str());
}

// Conversions checked against PyTorch's own (fixture dtypes_f32, made by make_reference.py):
// reading its F16/BF16 gives its .float() values, and writing F16/BF16 rounds as .half()/.bfloat16().
TEST(Safetensors, EveryFloatDtypeMatchesPyTorchBothWays) {
  const attn::io::SafetensorsFile ref(std::string(ATTN_REFERENCE_DIR) + "/dtypes_f32.safetensors");
  const Tensor<float> source = ref.get<float>("input.source");
  const Tensor<float> f16 = ref.get<float>("output.f16_as_f32"), bf16 = ref.get<float>("output.bf16_as_f32");
  EXPECT_TRUE(AllClose(ref.get<float>("output.f16"), f16, 0.0));
  EXPECT_TRUE(AllClose(ref.get<float>("output.bf16"), bf16, 0.0));
  EXPECT_TRUE(AllClose(ref.get<float>("output.f64"), source, 0.0));
  EXPECT_EQ(ref.info("output.f16").dtype, attn::io::DType::kF16);
  EXPECT_EQ(ref.info("output.bf16").dtype, attn::io::DType::kBF16);

  const std::string path = temp_path("every_float_dtype");
  attn::io::SafetensorsWriter w;
  w.add("f32", source);
  w.add("f64", Tensor<double>(source.shape(), 0.0));
  w.add("f16", source, attn::io::DType::kF16);
  w.add("bf16", source, attn::io::DType::kBF16);
  w.add("f16_from_double", ref.get<double>("output.f16_as_f32"), attn::io::DType::kF16);
  w.write(path);
  const attn::io::SafetensorsFile r(path);
  EXPECT_TRUE(AllClose(r.get<float>("f32"), source, 0.0));
  for (Index i = 0; i < source.numel(); ++i) {
    EXPECT_EQ(r.get<float>("f16")[i], f16[i]) << "element " << i << ": " << source[i];
    EXPECT_EQ(r.get<float>("bf16")[i], bf16[i]) << "element " << i << ": " << source[i];
  }
  EXPECT_TRUE(AllClose(r.get<float>("f16_from_double"), f16, 0.0));  // exact halves stay exact
  EXPECT_EQ(r.info("f64").dtype, attn::io::DType::kF64);
  ExpectInvalid([&] { w.add("x", source, attn::io::DType::kI32); }, {"'x' is floating-point", "I32"});
  std::remove(path.c_str());
}

/// The bits of every element of t (16-bit element types).
template <class T>
std::vector<std::uint16_t> bits_of(const Tensor<T>& t) {
  std::vector<std::uint16_t> out(static_cast<std::size_t>(t.numel()));
  static_assert(sizeof(T) == 2, "16-bit element types");
  std::memcpy(out.data(), t.data(), out.size() * 2);
  return out;
}

// attn::bfloat16 and attn::half as tensor element types, against PyTorch (fixture dtypes_f32):
// a BF16 or F16 tensor loads into them in 2 bytes an element with its bits kept (its .float()
// values are PyTorch's), F32 and F64 load into them rounded as torch's .bfloat16() / .half(),
// and they save as BF16 / F16 bit for bit (the bytes PyTorch wrote) or widen exactly to F32.
TEST(Safetensors, Bfloat16AndHalfTensorsLoadAndSaveWithoutWidening) {
  using attn::bfloat16;
  using attn::half;
  const attn::io::SafetensorsFile ref(std::string(ATTN_REFERENCE_DIR) + "/dtypes_f32.safetensors");
  const Tensor<float> bf16_values = ref.get<float>("output.bf16_as_f32"), f16_values = ref.get<float>("output.f16_as_f32");
  const Tensor<bfloat16> b = ref.get<bfloat16>("output.bf16");
  const Tensor<half> h = ref.get<half>("output.f16");
  static_assert(sizeof(bfloat16) == 2 && sizeof(half) == 2, "two bytes an element");
  ASSERT_EQ(b.shape(), bf16_values.shape());
  for (Index i = 0; i < b.numel(); ++i) {
    EXPECT_EQ(static_cast<float>(b[i]), bf16_values[i]) << "element " << i;
    EXPECT_EQ(static_cast<float>(h[i]), f16_values[i]) << "element " << i;
  }
  const Tensor<bfloat16> b_from_f32 = ref.get<bfloat16>("input.source");
  const Tensor<half> h_from_f64 = ref.get<half>("output.f64");
  EXPECT_EQ(bits_of(b_from_f32), bits_of(b));  // rounded as torch's .bfloat16()
  EXPECT_EQ(bits_of(h_from_f64), bits_of(h));  // as torch's .half() (through float)

  const std::string path = temp_path("bfloat16_half");
  attn::io::SafetensorsWriter w;
  w.add("b", b);
  w.add("h", h);
  w.add("b_as_f32", b, attn::io::DType::kF32);
  w.write(path);
  const attn::io::SafetensorsFile r(path);
  EXPECT_EQ(r.info("b").dtype, attn::io::DType::kBF16);
  EXPECT_EQ(r.info("h").dtype, attn::io::DType::kF16);
  EXPECT_EQ(bits_of(r.get<bfloat16>("b")), bits_of(b));
  EXPECT_EQ(bits_of(r.get<half>("h")), bits_of(h));
  EXPECT_TRUE(AllClose(r.get<float>("b_as_f32"), bf16_values, 0.0));
  const attn::StateDict<bfloat16> dict = r.state_dict<bfloat16>();
  EXPECT_EQ(dict.size(), 3u);
  EXPECT_EQ(bits_of(dict.at("h")), bits_of(ref.get<bfloat16>("output.f16")));  // F16 -> bfloat16 via float
  std::remove(path.c_str());
}

TEST(Safetensors, HalfAndBfloat16KeepInfinityAndNaN) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor<float> t({4}, {inf, -inf, nan, -nan});
  const std::string path = temp_path("half_specials");
  attn::io::SafetensorsWriter w;
  w.add("h", t, attn::io::DType::kF16);
  w.add("b", t, attn::io::DType::kBF16);
  w.write(path);
  const attn::io::SafetensorsFile r(path);
  for (const char* name : {"h", "b"}) {
    const Tensor<float> back = r.get<float>(name);
    EXPECT_EQ(back[0], inf) << name;
    EXPECT_EQ(back[1], -inf) << name;
    EXPECT_TRUE(std::isnan(back[2]) && std::isnan(back[3])) << name;
  }
  std::remove(path.c_str());
}

TEST(Safetensors, IntegerAndBoolDtypesRoundTrip) {
  const attn::io::SafetensorsFile ref(std::string(ATTN_REFERENCE_DIR) + "/dtypes_f32.safetensors");
  const std::vector<std::int64_t> ints{0, 1, -1, 7, 2147483647, -2147483648LL, 1LL << 40, 0};
  EXPECT_EQ(ref.get_int64("input.i64"), ints);
  EXPECT_EQ(ref.get_int64("output.i32"), (std::vector<std::int64_t>{0, 1, -1, 7, 2147483647, 0}));  // |v| < 2^31
  EXPECT_EQ(ref.get_int64("output.u8"), (std::vector<std::int64_t>{0, 1, 2, 255}));
  EXPECT_EQ(ref.get_int64("output.bool"), (std::vector<std::int64_t>{1, 0, 1}));
  const Tensor<bool> as_mask = ref.get_bool("input.i64");  // nonzero = true, whichever byte holds it
  for (Index i = 0; i < as_mask.numel(); ++i) EXPECT_EQ(as_mask[i], ints[static_cast<std::size_t>(i)] != 0) << i;

  const std::string path = temp_path("ints");
  const Tensor<bool> mask({2, 3}, {true, false, false, true, true, false});
  attn::io::SafetensorsWriter w;
  for (auto dt : {attn::io::DType::kBool, attn::io::DType::kU8, attn::io::DType::kI32, attn::io::DType::kI64})
    w.add(std::string("mask_") + attn::io::dtype_name(dt), mask, dt);
  w.add("i64", {8}, ints);
  w.add("i32", {2}, {-5, 2147483647}, attn::io::DType::kI32);
  w.add("u8", {2}, {0, 255}, attn::io::DType::kU8);
  ExpectInvalid([&] { w.add("big", {1}, {1LL << 31}, attn::io::DType::kI32); }, {"'big'", "2147483648", "I32"});
  ExpectInvalid([&] { w.add("neg", {1}, {-1}, attn::io::DType::kU8); }, {"'neg'", "-1", "U8"});
  ExpectInvalid([&] { w.add("n", {3}, {1, 2}); }, {"'n' has 2 values for shape (3,)"});
  w.write(path);
  const attn::io::SafetensorsFile r(path);
  for (const char* dt : {"BOOL", "U8", "I32", "I64"}) {
    const std::string name = std::string("mask_") + dt;
    EXPECT_EQ(attn::io::dtype_name(r.info(name).dtype), std::string(dt));
    const Tensor<bool> back = r.get_bool(name);
    EXPECT_EQ(back.shape(), mask.shape());
    for (Index i = 0; i < mask.numel(); ++i) EXPECT_EQ(back[i], mask[i]) << name << " " << i;
  }
  EXPECT_EQ(r.get_int64("i64"), ints);
  EXPECT_EQ(r.get_int64("i32"), (std::vector<std::int64_t>{-5, 2147483647}));
  EXPECT_EQ(r.get_int64("u8"), (std::vector<std::int64_t>{0, 255}));
  try {
    r.get_int64("nothing");
    ADD_FAILURE() << "read a tensor that does not exist";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'nothing'"), std::string::npos) << e.what();
  }
  std::remove(path.c_str());
}

// A submodule's weights taken out of a bigger checkpoint by prefix, as from timm or MobileViT.
TEST(Safetensors, LoadsOneSubmoduleOfABiggerFileByPrefix) {
  const std::string path = temp_path("checkpoint");
  attn::TalkingHeadsAttention<float> block0(16, 4), block1(16, 4);
  for (auto& s : block1.edit_parameters()) std::fill(s.data, s.data + attn::detail::checked_numel(s.shape, ""), 0.25f);
  attn::MobileViTEncoderLayer<double> enc(8, 4, 2);
  attn::io::SafetensorsWriter w;
  w.add("cls_token", Tensor<float>({1, 1, 16}, 1.0f));
  w.add(block0.state_dict("blocks.0.attn."));
  w.add(block1.state_dict("blocks.1.attn."));
  w.add(enc.state_dict("transformer.0."));
  w.add("blocks.1.attn_steps", {1}, {3});  // an integer buffer under the prefix: not a parameter
  w.write(path);
  const attn::io::SafetensorsFile file(path);

  attn::TalkingHeadsAttention<float> loaded(16, 4);
  attn::load_state_dict(loaded, file.state_dict<float>(), "blocks.1.attn.");
  const Tensor<float> x = random_tensor<float>({2, 5, 16}, 3);
  EXPECT_TRUE(AllClose(loaded.forward(x), block1.forward(x), 0.0));
  loaded.load_state_dict(file.state_dict<float>("blocks.0."), "attn.");  // member form; prefixes compose
  EXPECT_TRUE(AllClose(loaded.forward(x), block0.forward(x), 0.0));

  // seed 004 names under a MobileViT prefix: the fused layout is recognised below the prefix
  attn::MultiHeadAttention<double> mha(8, 4);
  mha.load_state_dict(file.state_dict<double>(), "transformer.0.pre_norm_mha.1.");
  EXPECT_EQ(mha.layout(), attn::MhaLayout::kFusedQkv);
  EXPECT_TRUE(AllClose(mha.state_dict().at("qkv_proj.weight"), enc.state_dict().at("pre_norm_mha.1.qkv_proj.weight"), 0.0));

  // strict errors name the keys with their prefix; keys outside the prefix are ignored
  attn::TalkingHeadsAttention<float> wrong(16, 2);
  ExpectInvalid([&] { attn::load_state_dict(wrong, file.state_dict<float>(), "blocks.1.attn."); },
                {"size mismatch", "blocks.1.attn.proj_l.weight: expected (2, 2), got (4, 4)"});
  ExpectInvalid([&] { loaded.load_state_dict(file.state_dict<float>(), "blocks.2.attn."); },
                {"missing key(s): blocks.2.attn.qkv.weight, ", "blocks.2.attn.proj_w.bias;"});
  std::remove(path.c_str());
}

TEST(Safetensors, HalfAndBfloat16Convert) {
  const std::string path = temp_path("half");
  // F16 1.0 = 0x3C00, -2.5 = 0xC100; BF16 1.0 = 0x3F80, 3.0 = 0x4040
  write_bytes(path,
              R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}})",
              std::string("\x00\x3C\x00\xC1\x80\x3F\x40\x40", 8));
  const attn::io::SafetensorsFile r(path);
  EXPECT_EQ(r.get<float>("h")[0], 1.0f);
  EXPECT_EQ(r.get<float>("h")[1], -2.5f);
  EXPECT_EQ(r.get<double>("b")[0], 1.0);
  EXPECT_EQ(r.get<double>("b")[1], 3.0);
  std::remove(path.c_str());
}

TEST(Safetensors, MalformedFilesAreRejectedWithTheirReason) {
  const std::string path = temp_path("bad");
  const std::string ok = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_rejected(::testing::TempDir(), "not a regular file");
  expect_rejected(path + ".missing", "cannot open file");
  { std::ofstream(path, std::ios::binary); }
  expect_rejected(path, "file is 0 bytes, shorter than the 8-byte header size");
  { std::ofstream(path, std::ios::binary) << "abc"; }
  expect_rejected(path, "shorter than the 8-byte header size");
  write_bytes(path, ok, std::string(4, '\0'));  // truncated data
  expect_rejected(path, "tensor 't': data_offsets end 8 is past the data area (4 bytes)");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "");
  expect_rejected(path, "past the data area (0 bytes)");
  {
    std::ofstream out(path, std::ios::binary);  // header size 64, but only 10 bytes follow
    out.put('\x40');
    out << std::string(7, '\0') << "{\"t\":1}   ";
  }
  expect_rejected(path, "header size 64 runs past the end of the 18-byte file");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
              std::string(8, '\0'));
  expect_rejected(path, "tensor 't': duplicate name");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"t":"x"},"u":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}})",
              std::string(8, '\0'));
  EXPECT_NO_THROW(attn::io::SafetensorsFile{path});  // a metadata key equal to a tensor name is no duplicate
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,9]}})", std::string(9, '\0'));
  expect_rejected(path, "9 bytes do not hold shape (2,) of F32");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_rejected(path, "element count overflows");
  write_bytes(path, R"({"t":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_rejected(path, "do not hold shape");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}})", std::string(8, '\0'));
  expect_rejected(path, "past the data area");
  write_bytes(path, R"([1, 2])", "");
  expect_rejected(path, "header is not a JSON object");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_rejected(path, "not a non-negative integer");
  write_bytes(path, "{not json", "");
  expect_rejected(path, "not valid JSON");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, '\0'));
  expect_rejected(path, "reversed");
  write_bytes(path, R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_rejected(path, "do not hold shape (3,)");
  write_bytes(path, R"({"t":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0'));
  expect_rejected(path, "unknown dtype 'Q7'");
  write_bytes(path,
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
              std::string(8, '\0'));
  expect_rejected(path, "overlap");
  {
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 8; ++i) out.put(i == 7 ? '\x7f' : '\xff');
  }
  expect_rejected(path, "exceeds the 100 MB limit");
  std::remove(path.c_str());
}

}  // namespace
