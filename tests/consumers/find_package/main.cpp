// Minimal consumer of attn, shared by tests/consumers/find_package and
// tests/consumers/add_subdirectory. Returns non-zero on failure.
#include <attn/attn.hpp>

int main() {
  attn::Tensor<float> x({1, 3, 8}, 0.5f);
  attn::SelfAttention<float> sa(8);
  auto y = sa.forward(x);
  return y.numel() == 24 ? 0 : 1;
}
