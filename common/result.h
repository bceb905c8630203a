#pragma once
// Result types for expected failures (bad input, missing file, lost peer). Exceptions are kept
// for what should never happen; see STYLE.md.

#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace hq {

struct Error {
  std::string message;
};

// A success or an error message. Discarding one is a compile warning; call ignore() to discard
// deliberately.
class [[nodiscard]] Status {
 public:
  Status() = default;
  static Status ok() { return {}; }
  static Status error(std::string message) { return Status(Error{std::move(message)}); }
  Status(Error e) : error_(std::move(e)) {}  // NOLINT(google-explicit-constructor)

  bool is_ok() const { return !error_; }
  explicit operator bool() const { return is_ok(); }
  const std::string& message() const { return error_->message; }
  void ignore() const {}

 private:
  std::optional<Error> error_;
};

// A value or an error message.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool is_ok() const { return v_.index() == 0; }
  explicit operator bool() const { return is_ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const std::string& message() const { return std::get<1>(v_).message; }
  Error error() const { return std::get<1>(v_); }
  Status status() const { return is_ok() ? Status::ok() : Status(std::get<1>(v_)); }

 private:
  std::variant<T, Error> v_;
};

}  // namespace hq
