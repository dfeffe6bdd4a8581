// Cross-attention: decoder queries attend to an encoder memory of another length
// and width. Queries (2, 7, 32); memory (2, 19, 48) projected with kdim = vdim = 48; the
// second sequence's memory is padded after 12 positions, so those keys are masked out.
#include "example_util.hpp"

int main() {
  attn::MultiHeadAttentionOptions options;
  options.kdim = 48;
  options.vdim = 48;
  attn::MultiHeadAttention<float> attention(32, 4, options);

  const attn::Tensor<float> queries = example::rand<float>({2, 7, 32}, 5);
  const attn::Tensor<float> memory = example::rand<float>({2, 19, 48}, 6);
  attn::Tensor<bool> padding({2, 19}, false);  // true = padding: ignore this key
  for (attn::Index j = 12; j < 19; ++j) padding(1, j) = true;

  attn::MhaArgs<float> args;
  args.key_padding_mask = attn::Mask<float>::block_where_true(padding);
  args.need_weights = true;
  attn::MhaOutput<float> r;
  const double ms = example::time_ms([&] { r = attention.forward(queries, memory, memory, args); });
  example::report("cross MultiHeadAttention(32, 4, kdim=vdim=48)", queries.shape(), r.output, ms);

  double padded_weight = 0;
  for (attn::Index i = 0; i < 7; ++i)
    for (attn::Index j = 12; j < 19; ++j) padded_weight += r.attn_weights(1, i, j);
  std::printf("weights %s averaged over heads; weight on padded memory: %g\n",
              attn::to_string(r.attn_weights.shape()).c_str(), padded_weight);
  return r.output.shape() == queries.shape() && padded_weight == 0 ? 0 : 1;
}
