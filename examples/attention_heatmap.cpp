// Attention weights as a picture: a MultiHeadAttention(64, 4) with its default (random)
// weights runs over 48 positions whose input is the sinusoidal position encoding (times 3,
// so that the softmax is sharp enough to show a pattern), with a causal sliding-window mask
// (each query sees itself and the 11 keys before it), and head 0's weights are written as a
// PNG heatmap: one 8x8 block per (query row, key column), the colour the weight over the
// largest weight of its row (viridis: dark purple 0, yellow 1), masked pairs grey.
// Needs stb_image_write.h (Debian: libstb-dev).
// Usage: attention_heatmap [output.png]     (default attention_heatmap.png)
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "example_util.hpp"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

namespace {

using attn::Index;
using Rgb = std::array<std::uint8_t, 3>;

constexpr Index kLength = 48, kEmbed = 64, kHeads = 4, kWindow = 12, kHead = 0, kCell = 8;
constexpr double kGain = 3.0;  // input scale: unscaled, the random weights give near-uniform rows

/// (1, L, E): kGain times the sinusoidal position encoding of "Attention Is All You Need".
attn::Tensor<float> positions() {
  attn::Tensor<float> x({1, kLength, kEmbed});
  for (Index i = 0; i < kLength; ++i)
    for (Index k = 0; k < kEmbed; k += 2) {
      const double angle = double(i) * std::pow(10000.0, -double(k) / double(kEmbed));
      x(0, i, k) = float(kGain * std::sin(angle));
      x(0, i, k + 1) = float(kGain * std::cos(angle));
    }
  return x;
}

/// (L, L), true = blocked (nn.MultiheadAttention's meaning): the future and keys kWindow or more back.
attn::Tensor<bool> sliding_window_mask() {
  attn::Tensor<bool> blocked({kLength, kLength}, false);
  for (Index i = 0; i < kLength; ++i)
    for (Index j = 0; j < kLength; ++j) blocked(i, j) = j > i || j <= i - kWindow;
  return blocked;
}

/// Viridis at t in [0, 1], interpolated between five of its colours.
Rgb viridis(double t) {
  static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  const double x = std::clamp(t, 0.0, 1.0) * 4.0;
  const int i = std::min(int(x), 3);
  const double f = x - i;
  Rgb c;
  for (int ch = 0; ch < 3; ++ch)
    c[ch] = std::uint8_t(std::lround(stops[i][ch] + f * (stops[i + 1][ch] - stops[i][ch])));
  return c;
}

/// The colour of every (query, key) of one head's weights (L, L): weight / row max, masked grey.
std::vector<Rgb> colours(const attn::Tensor<float>& weights, const attn::Tensor<bool>& blocked) {
  std::vector<Rgb> out;
  for (Index i = 0; i < kLength; ++i) {
    float row_max = 0;
    for (Index j = 0; j < kLength; ++j) row_max = std::max(row_max, weights(0, kHead, i, j));
    for (Index j = 0; j < kLength; ++j)
      out.push_back(blocked(i, j) ? Rgb{96, 96, 96} : viridis(double(weights(0, kHead, i, j) / row_max)));
  }
  return out;
}

/// Writes the L x L colours as a PNG of kCell x kCell blocks; false if stb could not write it.
bool write_png(const std::string& path, const std::vector<Rgb>& cells) {
  const Index side = kLength * kCell;
  std::vector<std::uint8_t> pixels;
  pixels.reserve(std::size_t(side * side * 3));
  for (Index y = 0; y < side; ++y)
    for (Index x = 0; x < side; ++x) {
      const Rgb& c = cells[std::size_t((y / kCell) * kLength + x / kCell)];
      pixels.insert(pixels.end(), c.begin(), c.end());
    }
  return stbi_write_png(path.c_str(), int(side), int(side), 3, pixels.data(), int(side * 3)) != 0;
}

/// Largest |row sum - 1| over visible keys plus any weight on a blocked key (0 if the weights are right).
double mask_error(const attn::Tensor<float>& weights, const attn::Tensor<bool>& blocked) {
  double worst = 0;
  for (Index i = 0; i < kLength; ++i) {
    double sum = 0;
    for (Index j = 0; j < kLength; ++j) {
      const double w = weights(0, kHead, i, j);
      if (blocked(i, j)) worst = std::max(worst, std::abs(w));
      sum += w;
    }
    worst = std::max(worst, std::abs(sum - 1.0));
  }
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 2) {
    std::fprintf(stderr, "usage: attention_heatmap [output.png]   (default attention_heatmap.png)\n");
    return 2;
  }
  const std::string path = argc == 2 ? argv[1] : "attention_heatmap.png";
  attn::MultiHeadAttention<float> attention(kEmbed, kHeads);
  const attn::Tensor<float> x = positions();
  const attn::Tensor<bool> blocked = sliding_window_mask();
  attn::MhaArgs<float> args;
  args.attn_mask = attn::Mask<float>::block_where_true(blocked);
  args.need_weights = true;
  args.average_attn_weights = false;  // (B, H, L, S): one map per head
  const attn::Tensor<float> weights = attention.forward(x, args).attn_weights;

  const double error = mask_error(weights, blocked);
  std::printf("MultiHeadAttention(%lld, %lld), random weights, input %g x sinusoidal positions, "
              "causal window of %lld keys: weights %s, head %lld drawn;\n"
              "rows sum to 1 and blocked keys get 0 (error %.2g)\n",
              (long long)kEmbed, (long long)kHeads, kGain, (long long)kWindow, attn::to_string(weights.shape()).c_str(),
              (long long)kHead, error);
  if (!write_png(path, colours(weights, blocked))) {
    std::fprintf(stderr, "attention_heatmap: could not write %s\n", path.c_str());
    return 1;
  }
  std::printf("wrote %s: %lld x %lld pixels (%lld px per query/key cell; rows are queries, columns keys), %llu bytes\n",
              path.c_str(), (long long)(kLength * kCell), (long long)(kLength * kCell), (long long)kCell,
              (unsigned long long)std::filesystem::file_size(path));
  return error < 1e-5 ? 0 : 1;
}
