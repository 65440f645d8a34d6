// The two lock-free queues between a host's threads and a session's network thread:
// SpscRing (audio and control marks: network thread -> audio thread) and MpscQueue (controls:
// any thread -> network thread). Both are bounded and allocate only when constructed, so that
// the audio thread's side never allocates, locks or blocks.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace distill {

inline size_t NextPowerOfTwo(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// A single-producer/single-consumer ring of T. Positions only grow (64-bit: they do not wrap in
// practice); slot = position & mask. The producer publishes with a release store of write_, the
// consumer with a release store of read_, each reading the other's with acquire.
template <typename T>
class SpscRing {
 public:
  explicit SpscRing(size_t min_capacity)
      : capacity_(NextPowerOfTwo(min_capacity)),
        mask_(capacity_ - 1),
        slots_(new T[capacity_]()) {}

  size_t capacity() const { return capacity_; }

  // Producer side.
  size_t Writable() const {
    return capacity_ - (write_.load(std::memory_order_relaxed) - read_.load(std::memory_order_acquire));
  }
  // Writes n <= Writable() items.
  void Write(const T* items, size_t n) {
    uint64_t w = write_.load(std::memory_order_relaxed);
    for (size_t i = 0; i < n; ++i) slots_[(w + i) & mask_] = items[i];
    write_.store(w + n, std::memory_order_release);
  }
  bool Push(const T& item) {
    if (Writable() == 0) return false;
    Write(&item, 1);
    return true;
  }

  // Consumer side.
  size_t Readable() const {
    return write_.load(std::memory_order_acquire) - read_.load(std::memory_order_relaxed);
  }
  // The i-th readable item (i < Readable()).
  const T& Peek(size_t i) const {
    return slots_[(read_.load(std::memory_order_relaxed) + i) & mask_];
  }
  void Consume(size_t n) {
    read_.store(read_.load(std::memory_order_relaxed) + n, std::memory_order_release);
  }

 private:
  const size_t capacity_;
  const size_t mask_;
  std::unique_ptr<T[]> slots_;
  alignas(64) std::atomic<uint64_t> write_{0};
  alignas(64) std::atomic<uint64_t> read_{0};
};

// A bounded multi-producer/single-consumer queue (D. Vyukov's bounded MPMC queue, with one
// consumer): each cell's sequence number says whether it is free for position p (== p) or
// holds the item of position p (== p + 1). Push is lock-free and fails when the queue is full.
template <typename T>
class MpscQueue {
 public:
  explicit MpscQueue(size_t min_capacity)
      : capacity_(NextPowerOfTwo(min_capacity)),
        mask_(capacity_ - 1),
        cells_(new Cell[capacity_]) {
    for (size_t i = 0; i < capacity_; ++i) cells_[i].sequence.store(i, std::memory_order_relaxed);
  }

  bool Push(const T& item) {
    size_t position = enqueue_.load(std::memory_order_relaxed);
    for (;;) {
      Cell& cell = cells_[position & mask_];
      size_t sequence = cell.sequence.load(std::memory_order_acquire);
      auto diff = static_cast<std::ptrdiff_t>(sequence) - static_cast<std::ptrdiff_t>(position);
      if (diff == 0) {
        if (enqueue_.compare_exchange_weak(position, position + 1, std::memory_order_relaxed)) {
          cell.item = item;
          cell.sequence.store(position + 1, std::memory_order_release);
          return true;
        }
      } else if (diff < 0) {
        return false;  // full
      } else {
        position = enqueue_.load(std::memory_order_relaxed);
      }
    }
  }

  // Consumer only.
  bool Pop(T* out) {
    Cell& cell = cells_[dequeue_ & mask_];
    size_t sequence = cell.sequence.load(std::memory_order_acquire);
    if (static_cast<std::ptrdiff_t>(sequence) - static_cast<std::ptrdiff_t>(dequeue_ + 1) < 0) {
      return false;  // empty (or the next item is still being written)
    }
    *out = cell.item;
    cell.sequence.store(dequeue_ + capacity_, std::memory_order_release);
    ++dequeue_;
    return true;
  }

 private:
  struct Cell {
    std::atomic<size_t> sequence;
    T item;
  };
  const size_t capacity_;
  const size_t mask_;
  std::unique_ptr<Cell[]> cells_;
  alignas(64) std::atomic<size_t> enqueue_{0};
  alignas(64) size_t dequeue_ = 0;
};

}  // namespace distill
