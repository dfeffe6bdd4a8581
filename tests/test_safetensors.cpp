// safetensors reading and writing (the fixture format; issue-level hardening lives here too).
#include <cstdio>
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
  attn::TransformerEncoderLayer<float> enc(8, 4, 2);
  attn::io::SafetensorsWriter w;
  w.add(enc.state_dict(), "transformer.0.");
  w.write(path);
  attn::TransformerEncoderLayer<float> other(8, 4, 2);
  auto dict = attn::io::SafetensorsFile(path).state_dict<float>("transformer.0.");
  other.load_state_dict(dict);
  const Tensor<float> x = random_tensor<float>({1, 3, 8}, 1);
  EXPECT_TRUE(AllClose(other.forward(x), enc.forward(x), 0.0));
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
  { std::ofstream(path, std::ios::binary) << "abc"; }
  expect_rejected(path, "shorter than the 8-byte header size");
  write_bytes(path, ok, std::string(4, '\0'));
  expect_rejected(path, "past the data area");
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
