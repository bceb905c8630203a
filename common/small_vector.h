#pragma once
// A vector of trivially copyable values that keeps its first N inline and moves to the heap only
// beyond them. For short lists made and dropped at a high rate, such as the units a task got
// from a worker's pool (one to four entries for most tasks): a std::vector there cost one heap
// block per task, 13% of the scheduler benchmark (docs/benchmarks.md).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <type_traits>

namespace hq {

template <typename T, uint32_t N>
class SmallVector {
  static_assert(std::is_trivially_copyable_v<T>, "elements are copied as bytes");
  static_assert(N > 0);

 public:
  using value_type = T;
  using iterator = T*;
  using const_iterator = const T*;

  SmallVector() = default;
  SmallVector(std::initializer_list<T> values) {
    reserve(static_cast<uint32_t>(values.size()));
    for (const T& v : values) push_back(v);
  }
  SmallVector(const SmallVector& other) { assign(other); }
  SmallVector(SmallVector&& other) noexcept { take(other); }
  SmallVector& operator=(const SmallVector& other) {
    if (this != &other) {
      size_ = 0;
      assign(other);
    }
    return *this;
  }
  SmallVector& operator=(SmallVector&& other) noexcept {
    if (this != &other) {
      release();
      take(other);
    }
    return *this;
  }
  ~SmallVector() { release(); }

  T* data() { return on_heap() ? heap_ : reinterpret_cast<T*>(inline_); }
  const T* data() const { return on_heap() ? heap_ : reinterpret_cast<const T*>(inline_); }
  uint32_t size() const { return size_; }
  uint32_t capacity() const { return capacity_; }
  bool empty() const { return size_ == 0; }
  T* begin() { return data(); }
  T* end() { return data() + size_; }
  const T* begin() const { return data(); }
  const T* end() const { return data() + size_; }
  T& operator[](uint32_t i) { return data()[i]; }
  const T& operator[](uint32_t i) const { return data()[i]; }
  T& back() { return data()[size_ - 1]; }
  const T& back() const { return data()[size_ - 1]; }

  void clear() { size_ = 0; }
  void push_back(const T& value) {
    if (size_ == capacity_) {
      const T copy = value;  // `value` may be an entry of this vector, which grow() frees
      grow(capacity_ > UINT32_MAX / 2 ? UINT32_MAX : capacity_ * 2);
      new (data() + size_) T(copy);
    } else {
      new (data() + size_) T(value);
    }
    ++size_;
  }
  void reserve(uint32_t capacity) {
    if (capacity > capacity_) grow(capacity);
  }

  friend bool operator==(const SmallVector& a, const SmallVector& b) {
    if (a.size_ != b.size_) return false;
    for (uint32_t i = 0; i < a.size_; ++i) {
      if (!(a[i] == b[i])) return false;
    }
    return true;
  }

 private:
  bool on_heap() const { return capacity_ > N; }
  void grow(uint32_t capacity) {
    if (capacity <= size_ || capacity > SIZE_MAX / sizeof(T)) throw std::bad_alloc();
    T* block = static_cast<T*>(std::malloc(sizeof(T) * capacity));
    if (block == nullptr) throw std::bad_alloc();
    if (size_ > 0) std::memcpy(static_cast<void*>(block), data(), sizeof(T) * size_);
    release();
    heap_ = block;
    capacity_ = capacity;
  }
  // Frees the heap block, if any; the contents are then undefined (the size is kept).
  void release() {
    if (on_heap()) std::free(heap_);
    capacity_ = N;
  }
  void assign(const SmallVector& other) {
    reserve(other.size_);
    if (other.size_ > 0) {
      std::memcpy(static_cast<void*>(data()), other.data(), sizeof(T) * other.size_);
    }
    size_ = other.size_;
  }
  // `this` holds nothing on the heap; leaves `other` empty.
  void take(SmallVector& other) {
    size_ = other.size_;
    if (other.on_heap()) {
      heap_ = other.heap_;
      capacity_ = other.capacity_;
      other.capacity_ = N;
    } else if (size_ > 0) {
      std::memcpy(static_cast<void*>(inline_), other.inline_, sizeof(T) * size_);
    }
    other.size_ = 0;
  }

  uint32_t size_ = 0;
  uint32_t capacity_ = N;
  union {
    alignas(T) unsigned char inline_[sizeof(T) * N];
    T* heap_;
  };
};

}  // namespace hq
