// attn_mask of any shape that broadcasts to (B, H, L, S), as PyTorch's
// F.scaled_dot_product_attention takes it, plus nn.MultiheadAttention's (B*H, L, S), passed
// as it is to scaled_dot_product_attention, MultiHeadAttention::forward and
// TalkingHeadsAttention::forward (where the mask acts after proj_l, on the mixed heads), against
// PyTorch (tests/reference/data/bcast_*; make_reference.py build_broadcast). Shapes that do
// not broadcast are an std::invalid_argument naming the mask's shape and (B, H, L, S).
//
// Until attn implements the broadcasting, every shape but (L, S) and (B*H, L, S) fails here
// (label mask_broadcast).
#include <vector>

#include "support.hpp"

namespace {

using namespace attn_test;

/// The shapes each file holds, as make_reference.py spells them (L_S = (L, S), BH_L_S =
/// (B*H, L, S), B_1_1_S = (B, 1, 1, S) ...), stated here and checked against the file.
const char* const kShapes[] = {"L_S",     "1_L_S",   "H_L_S",   "BH_L_S",  "B_1_L_S", "1_H_L_S",
                               "B_H_L_S", "B_1_1_S", "B_H_1_S", "1_1_L_1", "1_1_1_S"};

struct BroadcastCase {
  const char* file;
  const char* target;  ///< "sdpa", "mha", "talking_heads"
  const char* kind;    ///< "bool" or "float"
  const char* shape;   ///< one of kShapes
};

std::ostream& operator<<(std::ostream& os, const BroadcastCase& c) { return os << c.file << "/" << c.shape; }

std::vector<BroadcastCase> all_cases() {
  std::vector<BroadcastCase> v;
  const BroadcastCase files[] = {{"bcast_sdpa_bool_f32", "sdpa", "bool", ""},
                                 {"bcast_sdpa_float_f64", "sdpa", "float", ""},
                                 {"bcast_mha_bool_f32", "mha", "bool", ""},
                                 {"bcast_mha_float_f64", "mha", "float", ""},
                                 {"bcast_talking_heads_bool_f32", "talking_heads", "bool", ""},
                                 {"bcast_talking_heads_float_f64", "talking_heads", "float", ""}};
  for (const auto& f : files)
    for (const char* shape : kShapes) v.push_back({f.file, f.target, f.kind, shape});
  return v;
}

/// The file's mask of one shape, as the test passes it: bool masks with SDPA's polarity
/// (keep_where_true, the stored mask inverted) for scaled_dot_product_attention and with
/// nn.MultiheadAttention's (block_where_true) for the modules; float masks additive.
template <class T>
struct FileMask {
  Tensor<bool> bools;
  Tensor<T> values;
  attn::Mask<T> mask;
  FileMask(const Case& c, const std::string& tensor, bool keep_polarity) {
    if (c.file().info(tensor).dtype == attn::io::DType::kBool) {
      bools = c.file().get_bool(tensor);
      if (keep_polarity) {
        for (Index i = 0; i < bools.numel(); ++i) bools[i] = !bools[i];
        mask = attn::Mask<T>::keep_where_true(bools);
      } else {
        mask = attn::Mask<T>::block_where_true(bools);
      }
    } else {
      values = c.get<T>(tensor);
      mask = attn::Mask<T>::additive(values);
    }
  }
};

template <class T>
void check_case(const BroadcastCase& bc) {
  SCOPED_TRACE(::testing::Message() << bc.file << ", attn_mask " << bc.shape);
  const Case c(bc.file);
  ASSERT_TRUE(c.MetaIs("module", "mask_broadcast"));
  ASSERT_TRUE(c.MetaIs("target", bc.target));
  ASSERT_TRUE(c.MetaIs("mask_kind", bc.kind));
  const std::string tag = bc.shape, target = bc.target;
  const std::string mask_name = "input." + tag + ".attn_mask";
  ASSERT_TRUE(c.has(mask_name)) << "no " << mask_name;
  const Tensor<T> expected = c.get<T>("output." + tag + ".output");
  const double tol = tolerance<T>(c.is_double());

  if (target == "sdpa") {
    const FileMask<T> m(c, mask_name, /*keep_polarity=*/true);
    const Tensor<T> q = c.get<T>("input.query"), k = c.get<T>("input.key"), v = c.get<T>("input.value");
    attn::SdpaOptions<T> opt;
    opt.scale = static_cast<T>(std::stod(c.meta("scale")));
    opt.attn_mask = m.mask;
    EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, opt), expected, tol)) << "tiled kernel";
    Tensor<T> weights;
    opt.attn_weights = &weights;
    EXPECT_TRUE(AllClose(attn::scaled_dot_product_attention<T>(q, k, v, opt), expected, tol)) << "with weights";
    EXPECT_TRUE(AllClose(weights, c.get<T>("output." + tag + ".attn_weights"), tol));
  } else if (target == "mha") {
    const FileMask<T> m(c, mask_name, false);
    attn::MultiHeadAttention<T> mha(c.meta_int("embed_dim"), c.meta_int("heads"));
    mha.load_state_dict(c.params<T>());
    const Tensor<T> q = c.get<T>("input.query"), kv = c.get<T>("input.key");
    attn::MhaArgs<T> args;
    args.attn_mask = m.mask;
    EXPECT_TRUE(AllClose(mha.forward(q, kv, kv, args).output, expected, tol)) << "need_weights off";
    args.need_weights = true;
    args.average_attn_weights = false;
    const auto r = mha.forward(q, kv, kv, args);
    EXPECT_TRUE(AllClose(r.output, expected, tol)) << "need_weights on";
    EXPECT_TRUE(AllClose(r.attn_weights, c.get<T>("output." + tag + ".attn_weights"), tol));
  } else {
    const FileMask<T> m(c, mask_name, false);
    attn::TalkingHeadsAttention<T> th(c.meta_int("embed_dim"), c.meta_int("heads"));
    th.load_state_dict(c.params<T>());
    attn::AttentionArgs<T> args;
    args.attn_mask = m.mask;
    EXPECT_TRUE(AllClose(th.forward(c.get<T>("input.x"), args), expected, tol));
  }
}

class MaskBroadcast : public ::testing::TestWithParam<BroadcastCase> {};
TEST_P(MaskBroadcast, Float) { check_case<float>(GetParam()); }
TEST_P(MaskBroadcast, Double) { check_case<double>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(PyTorch, MaskBroadcast, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<BroadcastCase>& info) {
                           return std::string(info.param.file) + "_" + info.param.shape;
                         });

// Every file holds the shapes listed above and no others.
TEST(MaskBroadcastFiles, HoldTheStatedShapes) {
  for (const char* file : {"bcast_sdpa_bool_f32", "bcast_sdpa_float_f64", "bcast_mha_bool_f32", "bcast_mha_float_f64",
                           "bcast_talking_heads_bool_f32", "bcast_talking_heads_float_f64"}) {
    const Case c(file);
    std::string shapes;
    for (const char* s : kShapes) shapes += std::string(shapes.empty() ? "" : " ") + s;
    EXPECT_TRUE(c.MetaIs("shapes", shapes));
  }
}

/// Expects f to throw std::invalid_argument naming the mask's shape and the (B, H, L, S) it
/// was checked against.
template <class F>
void expect_rejected(F&& f, const attn::Shape& mask, const attn::Shape& bhls) {
  ExpectInvalid(std::forward<F>(f), {"attn_mask", attn::to_string(mask).c_str(), attn::to_string(bhls).c_str()});
}

// Shapes that do not broadcast to (B, H, L, S) = (2, 3, 5, 7) (nor are (B*H, L, S)).
TEST(MaskBroadcastErrors, ShapesThatDoNotBroadcastNameBothShapes) {
  const Index nb = 2, nh = 3, len_q = 5, len_k = 7, e = 12;
  const attn::Shape bhls{nb, nh, len_q, len_k};
  const std::vector<attn::Shape> bad = {{2, len_q, len_k},        {len_q, len_k + 1},    {1, 1, len_q, 2},
                                        {3, 1, len_q, len_k},     {nb, 2, len_q, len_k}, {4, len_q, len_k},
                                        {1, nb, nh, len_q, len_k}};
  const Tensor<float> q({nb, nh, len_q, 4}), k({nb, nh, len_k, 4}), v({nb, nh, len_k, 4});
  attn::MultiHeadAttention<float> mha(e, nh);
  const Tensor<float> query({nb, len_q, e}), kv({nb, len_k, e});
  for (const attn::Shape& shape : bad) {
    SCOPED_TRACE(attn::to_string(shape));
    Tensor<bool> m(shape, false);
    attn::SdpaOptions<float> opt;
    opt.attn_mask = attn::Mask<float>::keep_where_true(m);
    expect_rejected([&] { attn::scaled_dot_product_attention<float>(q, k, v, opt); }, shape, bhls);
    attn::MhaArgs<float> args;
    args.attn_mask = attn::Mask<float>::block_where_true(m);
    expect_rejected([&] { mha.forward(query, kv, kv, args); }, shape, bhls);
  }
  // Talking heads: self-attention, L = S = 6.
  attn::TalkingHeadsAttention<float> th(e, nh);
  const Tensor<float> x({nb, 6, e});
  for (const attn::Shape& shape : std::vector<attn::Shape>{{2, 6, 6}, {6, 7}, {3, 1, 6, 6}, {1, nb, nh, 6, 6}}) {
    SCOPED_TRACE(attn::to_string(shape));
    Tensor<bool> m(shape, false);
    attn::AttentionArgs<float> args;
    args.attn_mask = attn::Mask<float>::block_where_true(m);
    expect_rejected([&] { th.forward(x, args); }, shape, attn::Shape{nb, nh, 6, 6});
  }
}

}  // namespace
