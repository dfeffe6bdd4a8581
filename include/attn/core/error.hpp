#pragma once
/// @file
/// @brief Error helpers: every caller mistake becomes a std::invalid_argument whose
/// message names the function, the argument and the shapes involved.

#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <Eigen/Core>

namespace attn {

/// Index type used for sizes and shapes (Eigen's, i.e. std::ptrdiff_t).
using Index = Eigen::Index;
/// A tensor shape, outermost dimension first (PyTorch order).
using Shape = std::vector<Index>;

/// @brief Formats a shape the way PyTorch prints it: "(2, 3, 4)".
inline std::string to_string(const Shape& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

namespace detail {

inline void write_part(std::ostringstream& os, const Shape& shape) { os << to_string(shape); }
template <class A>
void write_part(std::ostringstream& os, const A& a) {
  os << a;
}

/// Concatenates the parts into one message (shapes are printed as "(2, 3)").
template <class... Parts>
std::string message(const Parts&... parts) {
  std::ostringstream os;
  (write_part(os, parts), ...);
  return os.str();
}

/// Throws std::invalid_argument with the concatenated parts unless ok. The message is
/// only built on failure, so the check is cheap on the good path.
template <class... Parts>
void require(bool ok, const Parts&... parts) {
  if (!ok) throw std::invalid_argument(message(parts...));
}

/// Product of the dimensions, with an error instead of silent overflow.
inline Index checked_numel(const Shape& shape, const char* what) {
  Index n = 1;
  for (Index d : shape) {
    require(d >= 0, what, ": negative dimension in shape ", shape);
    if (d != 0 && n > std::numeric_limits<Index>::max() / d)
      throw std::invalid_argument(message(what, ": element count of shape ", shape, " overflows"));
    n *= d;
  }
  return n;
}

}  // namespace detail
}  // namespace attn
