#pragma once
// Test support: PyTorch reference cases (tests/reference/data/*.safetensors, made by
// tests/reference/make_reference.py) and a comparison that prints where it fails.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

#include <gtest/gtest.h>

#include <attn/attn.hpp>
#include <attn/io/safetensors.hpp>

#include "tensor_utils.hpp"

namespace attn_test {

using attn::Index;
using attn::Tensor;

/// The scalar types every typed suite runs over.
using Scalars = ::testing::Types<float, double>;

/// Relative tolerance (of the largest reference magnitude) for results computed in T from a
/// reference made in float64 (ref_double) or float32. Measured worst cases over all fixtures:
/// double/double 4.5e-16, float/float 3.3e-7, double vs a float32 reference 1.05e-6 (the
/// reference's own rounding); the bounds leave a margin of 5 to 200 times.
template <class T>
double tolerance(bool ref_double) {
  const bool computed_double = std::is_same<T, double>::value;
  if (computed_double && ref_double) return 1e-13;
  return computed_double == ref_double ? 2e-6 : 5e-6;
}

/// Checks shape, then max |actual - expected| <= tol * max |expected| (absolute when the
/// reference is all zeros). On failure prints the worst element, both values and the error.
template <class T, class U>
::testing::AssertionResult AllClose(const Tensor<T>& actual, const Tensor<U>& expected, double tol) {
  if (actual.shape() != expected.shape())
    return ::testing::AssertionFailure() << "shape " << attn::to_string(actual.shape()) << " != expected "
                                         << attn::to_string(expected.shape());
  double scale = 0, worst = -1;
  Index at = 0;
  for (Index i = 0; i < expected.numel(); ++i) scale = std::max(scale, std::abs(double(expected[i])));
  for (Index i = 0; i < expected.numel(); ++i) {
    const double a = double(actual[i]), e = double(expected[i]);
    const double err = std::isnan(a) != std::isnan(e) ? INFINITY : (std::isnan(a) ? 0 : std::abs(a - e));
    if (err > worst) worst = err, at = i;
  }
  const double rel = scale > 0 ? worst / scale : worst;
  if (expected.numel() == 0 || rel <= tol)
    return ::testing::AssertionSuccess() << "max error " << rel << " of max |ref| " << scale;
  return ::testing::AssertionFailure() << "max error " << worst << " (relative to max |ref| " << scale
                                       << ": " << rel << " > " << tol << ") at flat index " << at
                                       << ": actual " << double(actual[at]) << ", expected "
                                       << double(expected[at]);
}

/// One reference case file.
class Case {
 public:
  explicit Case(const std::string& name) : name_(name), file_(std::string(ATTN_REFERENCE_DIR) + "/" + name + ".safetensors") {}

  const std::string& name() const { return name_; }
  const attn::io::SafetensorsFile& file() const { return file_; }
  bool has(const std::string& tensor) const { return file_.contains(tensor); }
  std::string meta(const std::string& key) const {
    auto it = file_.metadata().find(key);
    if (it == file_.metadata().end()) throw std::runtime_error(name_ + ": no metadata key " + key);
    return it->second;
  }
  Index meta_int(const std::string& key) const { return std::stol(meta(key)); }
  bool meta_bool(const std::string& key) const { return meta(key) == "true"; }
  bool is_double() const { return meta("dtype") == "float64"; }

  template <class T>
  Tensor<T> get(const std::string& tensor) const { return file_.get<T>(tensor); }
  template <class T>
  attn::StateDict<T> params() const { return file_.state_dict<T>("param."); }

  /// A stored mask as attn sees it: BOOL = PyTorch MHA's meaning (true = masked), float = additive.
  /// The returned Mask views `storage`, which must outlive it.
  template <class T>
  attn::Mask<T> mask(const std::string& tensor, Tensor<bool>& bools, Tensor<T>& values) const {
    if (!has(tensor)) return {};
    if (file_.info(tensor).dtype == attn::io::DType::kBool) {
      bools = file_.get_bool(tensor);
      return attn::Mask<T>::block_where_true(bools);
    }
    values = get<T>(tensor);
    return attn::Mask<T>::additive(values);
  }

  attn::Causal causal() const {
    const std::string c = meta("causal");
    return c == "top_left" ? attn::Causal::kTopLeft : c == "bottom_right" ? attn::Causal::kBottomRight : attn::Causal::kNone;
  }

  /// Whether the file's metadata `key` is `value`. A test states the behaviour it runs
  /// (need_weights, causal, layout, masks ...) itself and asserts that the file agrees, so a
  /// stale or swapped file fails instead of steering the test onto another path.
  ::testing::AssertionResult MetaIs(const std::string& key, const std::string& value) const {
    auto it = file_.metadata().find(key);
    if (it == file_.metadata().end())
      return ::testing::AssertionFailure() << name_ << ": no metadata " << key << " (the test expects " << value << ")";
    if (it->second != value)
      return ::testing::AssertionFailure() << name_ << ": metadata " << key << " is " << it->second << ", the test runs "
                                           << value;
    return ::testing::AssertionSuccess();
  }

  /// Whether the file holds exactly the masks the test states: a space-separated list of
  /// "kpm:bool", "kpm:float", "am:bool2d", "am:bool3d", "am:float2d", "am:float3d" ("" = none).
  ::testing::AssertionResult HasMasks(const std::string& spec) const {
    std::string found;
    for (const auto& [tensor, tag] : {std::pair<const char*, const char*>{"input.key_padding_mask", "kpm"},
                                      std::pair<const char*, const char*>{"input.attn_mask", "am"}}) {
      if (!has(tensor)) continue;
      const auto& info = file_.info(tensor);
      std::string kind = info.dtype == attn::io::DType::kBool ? "bool" : "float";
      if (std::string(tag) == "am") kind += std::to_string(info.shape.size()) + "d";
      found += std::string(found.empty() ? "" : " ") + tag + ":" + kind;
    }
    if (found == spec) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << name_ << " holds masks \"" << found << "\", the test expects \"" << spec << "\"";
  }

 private:
  std::string name_;
  attn::io::SafetensorsFile file_;
};

/// How far y is from exact: the largest, the mean and the root-mean-square |y - exact|.
struct Errors {
  double max = 0, mean = 0, rms = 0;
};
template <class T>
Errors errors_against(const Tensor<T>& y, const Tensor<double>& exact) {
  Errors e;
  for (Index i = 0; i < exact.numel(); ++i) {
    const double d = std::abs(double(y[i]) - exact[i]);
    e.max = std::max(e.max, d), e.mean += d, e.rms += d * d;
  }
  const double n = double(std::max<Index>(exact.numel(), 1));
  e.mean /= n, e.rms = std::sqrt(e.rms / n);
  return e;
}

/// @brief Prints attn's and PyTorch's (output.torch) errors against output.exact, and how many
/// of attn's outputs differ from PyTorch's bits; returns {attn's, PyTorch's}.
template <class T>
std::pair<Errors, Errors> report_errors(const Case& c, const Tensor<T>& y) {
  const Tensor<double> exact = c.get<double>("output.exact");
  const Tensor<T> torch = c.get<T>("output.torch");
  if (y.shape() != exact.shape()) throw std::runtime_error(c.name() + ": the output's shape is not output.exact's");
  const Errors a = errors_against(y, exact), p = errors_against(torch, exact);
  Index differ = 0;
  for (Index i = 0; i < y.numel(); ++i) differ += std::memcmp(&y[i], &torch[i], sizeof(T)) != 0;
  std::printf("%s on %s: error attn / PyTorch: mean %.4g / %.4g, rms %.4g / %.4g, max %.4g / %.4g; %ld of %ld "
              "outputs differ from PyTorch's\n", c.name().c_str(), attn::to_string(attn::kernel_isa()), a.mean,
              p.mean, a.rms, p.rms, a.max, p.max, static_cast<long>(differ), static_cast<long>(y.numel()));
  return {a, p};
}

/// @brief The 16-bit accuracy rule: against output.exact (float64 on the same 16-bit inputs
/// and weights), attn's y has no larger error than output.torch, PyTorch 1.13's own 16-bit
/// result, as the mean and as the root-mean-square error. The largest errors are printed, not
/// compared: one element's last rounding can go either way (th_bf16: attn's largest error is
/// 4% above PyTorch's while its 2nd to 21st largest are all below PyTorch's).
template <class T>
void ExpectAtLeastAsAccurateAsPyTorch(const Case& c, const Tensor<T>& y) {
  const auto errors = report_errors(c, y);
  EXPECT_LE(errors.first.mean, errors.second.mean);
  EXPECT_LE(errors.first.rms, errors.second.rms);
}

/// @brief The rule of a float32 case over a KV cache stored in 16 or 8 bits (metadata
/// kv_cache_dtype): PyTorch (output.torch) computes the same float32 expression over the same
/// stored keys and values, and the storage's rounding dominates both errors against
/// output.exact (float64, no storage). So attn's mean and RMS errors are PyTorch's to 2%
/// (not rounding, or rounding twice, moves them far more), and no output is further from
/// PyTorch's than about one rounding of the storage, relative to max |ref|: bfloat16 2^-9 and
/// half 2^-12 (half their unit roundoff), int8 1/254 (half a quantisation step of a row whose
/// largest value is max |ref|). A key or value whose rounding goes the other way in attn (the
/// float32 projections differ in their last bits) moves an output by about that, so the
/// float32 tolerance would not do.
template <class T>
void ExpectSameStorageErrorAsPyTorch(const Case& c, const Tensor<T>& y) {
  const std::string dtype = c.meta("kv_cache_dtype");
  const double roundoff = dtype == "bfloat16" ? 0x1p-9 : dtype == "float16" ? 0x1p-12 : 1.0 / 254;
  const auto errors = report_errors(c, y);
  EXPECT_NEAR(errors.first.mean, errors.second.mean, 0.02 * errors.second.mean);
  EXPECT_NEAR(errors.first.rms, errors.second.rms, 0.02 * errors.second.rms);
  EXPECT_TRUE(AllClose(y, c.get<T>("output.torch"), roundoff));
}

/// @brief A module's output y on reference case c:
/// - within tol of output.output (AllClose);
/// - a 16-bit case (output.exact and output.torch instead): the 16-bit accuracy rule;
/// - a float32 case over a KV cache in 16 or 8 bits (kv_cache_dtype; output.exact and
///   output.torch): ExpectSameStorageErrorAsPyTorch.
template <class T>
void ExpectMatchesReference(const Case& c, const Tensor<T>& y, double tol, const std::string& context = "") {
  SCOPED_TRACE(context);
  if (!c.has("output.exact")) {
    EXPECT_TRUE(AllClose(y, c.get<T>("output.output"), tol));
  } else if (c.file().metadata().count("kv_cache_dtype")) {
    ExpectSameStorageErrorAsPyTorch(c, y);
  } else {
    ExpectAtLeastAsAccurateAsPyTorch(c, y);
  }
}

/// The metadata spelling of a causal mode.
inline const char* causal_name(attn::Causal c) {
  return c == attn::Causal::kTopLeft ? "top_left" : c == attn::Causal::kBottomRight ? "bottom_right" : "none";
}

/// Forward arguments whose dropout randomness comes from `gen`.
template <class T>
attn::AttentionArgs<T> with_generator(attn::Generator& gen) {
  attn::AttentionArgs<T> args;
  args.generator = &gen;
  return args;
}

/// Expects `f` to throw std::invalid_argument whose message contains every one of `parts`.
template <class F>
void ExpectInvalid(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
    ADD_FAILURE() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    for (const char* p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message: " << e.what() << "\nlacks: " << p;
  }
}

}  // namespace attn_test
