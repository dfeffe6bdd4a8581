#pragma once
/// @file
/// @brief State dicts (parameter name -> tensor) and PyTorch's strict loading rules.

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "attn/core/error.hpp"
#include "attn/core/tensor.hpp"

namespace attn {

/// @brief Parameter name -> tensor, with PyTorch's `state_dict()` names.
template <class T>
using StateDict = std::map<std::string, Tensor<T>>;

/// @brief A named parameter: where a module keeps it and the shape PyTorch gives it.
template <class T>
struct ParameterSlot {
  std::string name;  ///< PyTorch state_dict name relative to the module, e.g. "out_proj.weight"
  T* data;           ///< numel(shape) row-major elements in the module's own storage (read-only for const T)
  Shape shape;       ///< the parameter's PyTorch shape, e.g. (out_features, in_features) for a weight
};

namespace detail {

inline std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

/// Copies every slot into a fresh state dict, names prefixed.
template <class T>
StateDict<T> to_state_dict(const std::vector<ParameterSlot<const T>>& slots, const std::string& prefix = "") {
  StateDict<T> dict;
  for (const auto& s : slots) dict.emplace(prefix + s.name, Tensor<T>::from_data(s.shape, s.data));
  return dict;
}

/// @brief Loads `dict` into `slots` with torch.nn.Module.load_state_dict semantics.
///
/// Keys are matched after `prefix`; keys outside the prefix are ignored. With `strict`,
/// missing and unexpected keys are errors; a shape mismatch is always an error. Every
/// problem is collected into one std::invalid_argument that lists the names, and nothing
/// is copied unless the whole dict is valid.
template <class T>
void load_slots(const std::vector<ParameterSlot<T>>& slots, const StateDict<T>& dict,
                const std::string& module, bool strict, const std::string& prefix = "") {
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& s : slots) {
    auto it = dict.find(prefix + s.name);
    if (it == dict.end())
      missing.push_back(prefix + s.name);
    else if (it->second.shape() != s.shape)
      mismatched.push_back(prefix + s.name + ": expected " + to_string(s.shape) + ", got " +
                           to_string(it->second.shape()));
  }
  for (const auto& kv : dict) {
    if (kv.first.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string name = kv.first.substr(prefix.size());
    if (std::none_of(slots.begin(), slots.end(), [&](const auto& s) { return s.name == name; }))
      unexpected.push_back(kv.first);
  }
  std::string problems;
  if (strict && !missing.empty()) problems += " missing key(s): " + join(missing) + ";";
  if (strict && !unexpected.empty()) problems += " unexpected key(s): " + join(unexpected) + ";";
  if (!mismatched.empty()) problems += " size mismatch: " + join(mismatched) + ";";
  require(problems.empty(), module, "::load_state_dict: error(s) in loading state_dict:", problems);
  for (const auto& s : slots) {
    auto it = dict.find(prefix + s.name);
    if (it != dict.end()) std::copy(it->second.data(), it->second.data() + it->second.numel(), s.data);
  }
}

}  // namespace detail
}  // namespace attn
