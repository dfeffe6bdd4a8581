// Compiled twice by ctest (tests/CMakeLists.txt): as it is, it must compile (writes go
// through edit_parameters(), which repacks the weights when the edit ends); with
// -DWRITE_THROUGH_PARAMETERS it must not: parameters() gives read-only slots, so no write can
// leave a module computing with old packed weights.
#include <attn/attn.hpp>

int main() {
  attn::MultiHeadAttention<float> m(8, 2);
#if defined(WRITE_THROUGH_PARAMETERS)
  for (const auto& slot : m.parameters()) slot.data[0] = 1.0f;
#else
  {
    auto params = m.edit_parameters();
    for (auto& slot : params) slot.data[0] = 1.0f;
  }
#endif
  return m.forward(attn::Tensor<float>({1, 3, 8})).output.numel() == 24 ? 0 : 1;
}
