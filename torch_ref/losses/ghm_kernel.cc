// GHM-C's passes over anchors x classes as fused ATen CPU kernels (see ghm_kernel.py for why and how they
// load), registered as the custom ops torch.ops.torch_ref_ghm.*.
//
// The slot of an element is its bin k (edges[k] <= g < edges[k + 1], g = |sigmoid(pred) - target|) by the rule
// of ghm.bin_slot (floor of g * bins * (1 - 2^-20), then one comparison with the next edge, upper[k]), or
// `bins` ("no bin") where label_weight <= 0.
// ghm_slots: the slot of every element (int32; GHMC.bin_index).
// ghm_counts: the number of elements in each bin (int64, `bins` of them): what the weights need.
// ghm_harmonized_bce: sum(table[slot] * BCE-with-logits(pred, target)) and its gradient w.r.t. pred,
//   (sigmoid(pred) - target) * table[slot], in one pass that bins each element again (cheaper than storing
//   the slots: a fresh anchors x classes buffer costs more than the arithmetic). table[bins] = 0 is "no bin".
//
// The math runs on at::vec::Vectorized (ATen's own SIMD type: Sleef's exp and log1p, AVX2 where the build
// enables it), the work is split with at::parallel_for. The loss is summed in double over fixed blocks of
// elements and the block sums are added in order, so the result does not depend on the number of threads.
// The Paddle twin (paddle_impl/losses/ghm_kernel.cc) is written independently, the way Paddle extensions are.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

namespace {

using at::vec::Vectorized;

constexpr int64_t kBlock = 1 << 14;   // elements per partial sum of the loss, and per task

// sigmoid(x) from e = exp(-|x|): 1 / (1 + e) for x >= 0, e / (1 + e) below; never exp of a positive number.
template <typename T>
Vectorized<T> sigmoid_from(const Vectorized<T>& x, const Vectorized<T>& e) {
  const Vectorized<T> inv = Vectorized<T>(T(1)) / (Vectorized<T>(T(1)) + e);
  return Vectorized<T>::blendv(e * inv, inv, x >= Vectorized<T>(T(0)));
}

// table[index] lane by lane, by scalar loads (as fast as a vector gather here, for both lane widths).
template <typename T>
Vectorized<T> lookup(const T* table, const Vectorized<at::vec::int_same_size_t<T>>& index) {
  constexpr int64_t V = Vectorized<T>::size();
  at::vec::int_same_size_t<T> at_index[V];
  T value[V];
  index.store(at_index);
  for (int64_t k = 0; k < V; ++k) value[k] = table[at_index[k]];
  return Vectorized<T>::loadu(value);
}

// The bin rule of ghm.bin_slot, lane by lane: bin k of g (edges[k] <= g < edges[k + 1]), or `bins` ("no bin")
// for label_weight <= 0 and g >= the last edge. Slots come as integers of T's size (what gather takes).
template <typename T>
struct BinRule {
  using Vec = Vectorized<T>;
  using Int = at::vec::int_same_size_t<T>;
  using IVec = Vectorized<Int>;

  const T* upper;   // upper[m] = edges[m + 1]
  int32_t bins;

  IVec operator()(const Vec& g, const Vec& label_weight) const {
    const Vec scale(T(bins) * T(1.0 - 1.0 / 1048576.0));
    // g in [0, 1] (checked inputs): j in [0, bins - 1]; clamped so that upper is never read outside, NaN included.
    // floor first: ATen converts doubles to integers by rounding to nearest (floats by truncation).
    const IVec j = at::vec::clamp(at::vec::convert_to_int_of_same_size((g * scale).floor()), IVec(0), IVec(bins - 1));
    const IVec k = j - at::vec::cast<Int>(g >= lookup(upper, j));   // a true mask is -1
    return IVec::blendv(IVec(bins), k, at::vec::cast<Int>(label_weight > Vec(T(0))));
  }
};

// One vector's worth of elements from i, m <= Vec::size() of them (the lanes past m read as 0, and their
// label_weight of 0 puts them in "no bin"): e = exp(-|x|), diff = sigmoid(x) - t, and the slots.
template <typename T>
struct Lanes {
  using Vec = Vectorized<T>;
  Vec x, t, e, diff;
  typename BinRule<T>::IVec slot;

  Lanes(const T* px, const T* pt, const T* pw, const BinRule<T>& rule, int64_t i, int64_t m)
      : x(Vec::loadu(px + i, m)), t(Vec::loadu(pt + i, m)), e(x.abs().neg().exp()), diff(sigmoid_from(x, e) - t),
        slot(rule(diff.abs(), Vec::loadu(pw + i, m))) {}
};

template <typename T>
void slots_range(const T* x, const T* t, const T* w, const BinRule<T>& rule, int32_t* slot, int64_t begin,
                 int64_t end) {
  constexpr int64_t V = Vectorized<T>::size();
  typename BinRule<T>::Int lane_slot[V];
  for (int64_t i = begin; i < end; i += V) {
    const int64_t m = std::min<int64_t>(V, end - i);
    Lanes<T>(x, t, w, rule, i, m).slot.store(lane_slot);
    std::copy(lane_slot, lane_slot + m, slot + i);
  }
}

// Adds the number of elements of [begin, end) in each slot to counts[0, bins]. One histogram per lane: an
// increment never waits for the previous one (most elements share a bin).
template <typename T>
void counts_range(const T* x, const T* t, const T* w, const BinRule<T>& rule, int64_t* counts, int64_t begin,
                  int64_t end) {
  constexpr int64_t V = Vectorized<T>::size();
  const int64_t slots = rule.bins + 1;
  std::vector<int64_t> lane_counts(V * slots, 0);
  typename BinRule<T>::Int lane_slot[V];
  for (int64_t i = begin; i < end; i += V) {
    Lanes<T>(x, t, w, rule, i, std::min<int64_t>(V, end - i)).slot.store(lane_slot);
    for (int64_t k = 0; k < V; ++k) ++lane_counts[k * slots + lane_slot[k]];
  }
  for (int64_t k = 0; k < V; ++k) {
    for (int64_t s = 0; s < slots; ++s) counts[s] += lane_counts[k * slots + s];
  }
}

// Weighted BCE of elements [begin, end), summed in double, and its gradient into grad; weight = table[slot],
// table[bins] = 0 for "no bin" (the lanes past the end included).
// BCE = log1p(e) + (relu(x) - x t): no cancellation for confident logits (see ghm.HarmonizedBCE).
template <typename T>
double bce_range(const T* x, const T* t, const T* w, const BinRule<T>& rule, const T* table, T* grad,
                 int64_t begin, int64_t end) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  T terms[V];
  double lane_sums[V] = {};
  for (int64_t i = begin; i < end; i += V) {
    const int64_t m = std::min<int64_t>(V, end - i);
    const Lanes<T> lanes(x, t, w, rule, i, m);
    const Vec weight = lookup(table, lanes.slot);
    (lanes.diff * weight).store(grad + i, m);
    const Vec bce = lanes.e.log1p() + (at::vec::maximum(lanes.x, Vec(T(0))) - lanes.x * lanes.t);
    (bce * weight).store(terms);
    for (int64_t k = 0; k < V; ++k) lane_sums[k] += static_cast<double>(terms[k]);
  }
  double sum = 0;
  for (double lane : lane_sums) sum += lane;
  return sum;
}

// The inputs every op takes, checked and made contiguous, and the bin rule over them.
struct Inputs {
  at::Tensor pred, target, label_weight, upper;
  int32_t bins;

  Inputs(const at::Tensor& pred_, const at::Tensor& target_, const at::Tensor& label_weight_,
         const at::Tensor& upper_, int64_t bins_)
      : pred(pred_.contiguous()), target(target_.contiguous()), label_weight(label_weight_.contiguous()),
        upper(upper_.contiguous()), bins(static_cast<int32_t>(bins_)) {
    TORCH_CHECK(pred.device().is_cpu() && target.device().is_cpu() && label_weight.device().is_cpu() &&
                    upper.device().is_cpu(),
                "pred, target, label_weight and upper must be CPU tensors");
    TORCH_CHECK(target.sizes() == pred.sizes(), "target must have pred's shape");
    TORCH_CHECK(label_weight.sizes() == pred.sizes(), "label_weight must have pred's shape");
    TORCH_CHECK(target.scalar_type() == pred.scalar_type() && label_weight.scalar_type() == pred.scalar_type() &&
                    upper.scalar_type() == pred.scalar_type(),
                "target, label_weight and upper must have pred's dtype");
    TORCH_CHECK(bins_ >= 1 && bins_ < (int64_t(1) << 30) && upper.numel() >= bins_,
                "upper must hold at least `bins` edges");
  }

  // f(x, t, w, rule) with the data pointers of pred's dtype
  template <typename F>
  void dispatch(F f) const {
    AT_DISPATCH_FLOATING_TYPES(pred.scalar_type(), "torch_ref_ghm", [&] {
      f(pred.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), label_weight.data_ptr<scalar_t>(),
        BinRule<scalar_t>{upper.data_ptr<scalar_t>(), bins});
    });
  }
};

at::Tensor ghm_slots(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& label_weight,
                     const at::Tensor& upper, int64_t bins) {
  const Inputs in(pred, target, label_weight, upper, bins);
  at::Tensor slot = at::empty(pred.sizes(), pred.options().dtype(at::kInt));
  in.dispatch([&](const auto* x, const auto* t, const auto* w, const auto& rule) {
    at::parallel_for(0, slot.numel(), kBlock, [&](int64_t begin, int64_t end) {
      slots_range(x, t, w, rule, slot.data_ptr<int32_t>(), begin, end);
    });
  });
  return slot;
}

at::Tensor ghm_counts(const at::Tensor& pred, const at::Tensor& target, const at::Tensor& label_weight,
                      const at::Tensor& upper, int64_t bins) {
  const Inputs in(pred, target, label_weight, upper, bins);
  std::vector<int64_t> total(bins + 1, 0);
  std::mutex merge;
  in.dispatch([&](const auto* x, const auto* t, const auto* w, const auto& rule) {
    at::parallel_for(0, pred.numel(), kBlock, [&](int64_t begin, int64_t end) {
      std::vector<int64_t> counts(bins + 1, 0);                 // this task's own: no contention
      counts_range(x, t, w, rule, counts.data(), begin, end);
      const std::lock_guard<std::mutex> lock(merge);
      for (int64_t k = 0; k <= bins; ++k) total[k] += counts[k];
    });
  });
  at::Tensor counts = at::empty({bins}, pred.options().dtype(at::kLong));
  std::copy(total.begin(), total.begin() + bins, counts.data_ptr<int64_t>());
  return counts;
}

std::tuple<at::Tensor, at::Tensor> ghm_harmonized_bce(const at::Tensor& pred, const at::Tensor& target,
                                                      const at::Tensor& label_weight, const at::Tensor& upper,
                                                      const at::Tensor& table, int64_t bins) {
  const Inputs in(pred, target, label_weight, upper, bins);
  TORCH_CHECK(table.device().is_cpu() && table.scalar_type() == pred.scalar_type(),
              "table must be a CPU tensor of pred's dtype");
  TORCH_CHECK(table.numel() == bins + 1, "table must hold bins + 1 weights (the last for \"no bin\")");
  const at::Tensor weights = table.contiguous();
  at::Tensor grad = at::empty_like(in.pred);
  at::Tensor loss = at::empty({}, pred.options());
  const int64_t n = pred.numel(), blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> sums(blocks);
  in.dispatch([&](const auto* x, const auto* t, const auto* w, const auto& rule) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(x)>>;
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t stop) {
      for (int64_t b = first; b < stop; ++b) {
        sums[b] = bce_range(x, t, w, rule, weights.data_ptr<T>(), grad.data_ptr<T>(), b * kBlock,
                            std::min(n, (b + 1) * kBlock));
      }
    });
  });
  double total = 0;
  for (double part : sums) total += part;                      // in block order: the same for any thread count
  loss.fill_(total);
  return {loss, grad};
}

}  // namespace

TORCH_LIBRARY(torch_ref_ghm, m) {
  m.def("ghm_slots(Tensor pred, Tensor target, Tensor label_weight, Tensor upper, int bins) -> Tensor");
  m.def("ghm_counts(Tensor pred, Tensor target, Tensor label_weight, Tensor upper, int bins) -> Tensor");
  m.def("ghm_harmonized_bce(Tensor pred, Tensor target, Tensor label_weight, Tensor upper, Tensor table, "
        "int bins) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torch_ref_ghm, CPU, m) {
  m.impl("ghm_slots", &ghm_slots);
  m.impl("ghm_counts", &ghm_counts);
  m.impl("ghm_harmonized_bce", &ghm_harmonized_bce);
}
