#pragma once
/// @file
/// @brief attn: PyTorch's attention layers as header-only Eigen classes. Includes every
/// public header except io/ (which needs nlohmann-json: include <attn/io/safetensors.hpp>).

#include "attn/core/attention_options.hpp"
#include "attn/core/error.hpp"
#include "attn/core/generator.hpp"
#include "attn/core/heads_view.hpp"
#include "attn/core/isa.hpp"
#include "attn/core/mask.hpp"
#include "attn/core/parallel.hpp"
#include "attn/core/random.hpp"
#include "attn/core/state_dict.hpp"
#include "attn/core/tensor.hpp"
#include "attn/core/workspace.hpp"
#include "attn/modules/attention_args.hpp"
#include "attn/modules/attention_block.hpp"
#include "attn/modules/grouped_query_attention.hpp"
#include "attn/modules/layer_norm.hpp"
#include "attn/modules/linear.hpp"
#include "attn/modules/mobilevit_encoder_layer.hpp"
#include "attn/modules/module.hpp"
#include "attn/modules/multi_head_attention.hpp"
#include "attn/modules/options.hpp"
#include "attn/modules/self_attention.hpp"
#include "attn/modules/talking_heads_attention.hpp"
#include "attn/modules/transformer_decoder_layer.hpp"
#include "attn/modules/transformer_encoder_layer.hpp"
#include "attn/ops/activations.hpp"
#include "attn/ops/attention_states.hpp"
#include "attn/ops/dropout.hpp"
#include "attn/ops/head_mixing.hpp"
#include "attn/ops/kv_cache.hpp"
#include "attn/ops/layer_norm.hpp"
#include "attn/ops/linear.hpp"
#include "attn/ops/rotary.hpp"
#include "attn/ops/scaled_dot_product_attention.hpp"
#include "attn/ops/softmax.hpp"
#include "attn/ops/talking_heads_attention.hpp"
#include "attn/ops/varlen.hpp"

/// @brief Everything attn offers lives in this namespace; attn::detail is internal.
namespace attn {}
