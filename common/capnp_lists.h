#pragma once
// Copies between Cap'n Proto lists of primitives and std::vector, shared by the wire (net/) and
// the journal (journal/) conversions. Header only: common/ itself does not link Cap'n Proto.

#include <vector>

#include <capnp/list.h>

namespace hq {

template <typename T>
std::vector<T> list_to_vector(typename capnp::List<T>::Reader list) {
  std::vector<T> out;
  out.reserve(list.size());
  for (T v : list) out.push_back(v);
  return out;
}

// `list` was initialised with values.size() elements.
template <typename T>
void vector_to_list(const std::vector<T>& values, typename capnp::List<T>::Builder list) {
  for (size_t i = 0; i < values.size(); ++i) list.set(i, values[i]);
}

}  // namespace hq
