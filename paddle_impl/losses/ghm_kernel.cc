// GHM-C's passes over anchors x classes as fused CPU kernels (see ghm_kernel.py for why and how they load).
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
// The loops are written so that GCC vectorises them (-O3 -fopenmp-simd): no branches, only selects, and
// exp/log calls that resolve to glibc's vector math library (libmvec), declared below as SIMD functions
// because glibc's own headers only do so under -ffast-math, which would also let GCC simplify away the
// log1p correction. The loss is accumulated in double, block by block.
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "paddle/extension.h"

extern "C" {
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) float logf(float);
__attribute__((simd("notinbranch"))) double exp(double);
__attribute__((simd("notinbranch"))) double log(double);
}

namespace {

constexpr int64_t kBlock = 1 << 14;   // elements per partial sum of the loss

// sigmoid(x) from e = exp(-|x|): 1 / (1 + e) for x >= 0, e / (1 + e) below; never exp of a positive number.
template <typename T>
inline T sigmoid_from(T x, T e) {
  const T inv = T(1) / (T(1) + e);
  return x >= T(0) ? inv : e * inv;
}

// Slot of one element, from x, its e = exp(-|x|), its target and label weight (see the top of the file).
template <typename T>
inline int32_t slot_of(T x, T e, T t, T w, const T* upper, int32_t bins) {
  const T g = std::abs(sigmoid_from(x, e) - t);
  const T scale = T(bins) * T(1.0 - 1.0 / 1048576.0);
  int32_t j = static_cast<int32_t>(g * scale);            // g in [0, 1] (checked inputs): j in [0, bins - 1]
  j = j < 0 ? 0 : (j < bins ? j : bins - 1);              // never read outside the table, even for NaN
  const int32_t k = g >= upper[j] ? j + 1 : j;
  return w > T(0) ? k : bins;
}

template <typename T>
void slots_kernel(const T* x, const T* t, const T* w, const T* upper, int32_t bins, int32_t* slot, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) slot[i] = slot_of(x[i], std::exp(-std::abs(x[i])), t[i], w[i], upper, bins);
}

// counts[k] = number of elements in bin k < bins: slots a block at a time (vectorised), then counted.
template <typename T>
void counts_kernel(const T* x, const T* t, const T* w, const T* upper, int32_t bins, int64_t* counts, int64_t n) {
  std::vector<int64_t> all(bins + 1, 0);
  int32_t slot[1024];
  for (int64_t start = 0; start < n; start += 1024) {
    const int64_t m = n - start < 1024 ? n - start : 1024;
    slots_kernel(x + start, t + start, w + start, upper, bins, slot, m);
    for (int64_t i = 0; i < m; ++i) ++all[slot[i]];
  }
  std::copy(all.begin(), all.begin() + bins, counts);
}

// log1p(e) for e in [0, 1] from log: u = 1 + e rounds, log(u) - ((u - 1) - e) / u undoes the rounding to
// first order (exact enough that BCE of confident logits keeps its relative accuracy; u = 1 gives e).
template <typename T>
double bce_kernel(const T* x, const T* t, const T* w, const T* upper, int32_t bins, const T* table, T* grad,
                  int64_t n) {
  double total = 0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = start + kBlock < n ? start + kBlock : n;
    double part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t i = start; i < end; ++i) {
      const T e = std::exp(-std::abs(x[i]));
      const T weight = table[slot_of(x[i], e, t[i], w[i], upper, bins)];
      const T u = T(1) + e;
      const T log1p_e = std::log(u) - ((u - T(1)) - e) / u;
      const T relu = x[i] > T(0) ? x[i] : T(0);
      grad[i] = (sigmoid_from(x[i], e) - t[i]) * weight;
      part += static_cast<double>((log1p_e + (relu - x[i] * t[i])) * weight);   // see ghm.HarmonizedBCE
    }
    total += part;
  }
  return total;
}

// The inputs every op takes: CPU tensors of pred's shape and dtype, and an `upper` of at least `bins` edges.
void check_inputs(const paddle::Tensor& pred, const paddle::Tensor& target, const paddle::Tensor& label_weight,
                  const paddle::Tensor& upper, int bins) {
  PD_CHECK(pred.is_cpu() && target.is_cpu() && label_weight.is_cpu() && upper.is_cpu(),
           "pred, target, label_weight and upper must be CPU tensors");
  PD_CHECK(target.shape() == pred.shape(), "target must have pred's shape");
  PD_CHECK(label_weight.shape() == pred.shape(), "label_weight must have pred's shape");
  PD_CHECK(target.dtype() == pred.dtype() && label_weight.dtype() == pred.dtype() && upper.dtype() == pred.dtype(),
           "target, label_weight and upper must have pred's dtype");
  PD_CHECK(bins >= 1 && upper.numel() >= bins, "upper must hold at least `bins` edges");
}

}  // namespace

std::vector<paddle::Tensor> GhmSlots(const paddle::Tensor& pred, const paddle::Tensor& target,
                                     const paddle::Tensor& label_weight, const paddle::Tensor& upper, int bins) {
  check_inputs(pred, target, label_weight, upper, bins);
  auto slot = paddle::empty(pred.shape(), paddle::DataType::INT32, pred.place());
  PD_DISPATCH_FLOATING_TYPES(pred.type(), "ghm_slots", ([&] {
    slots_kernel<data_t>(pred.data<data_t>(), target.data<data_t>(), label_weight.data<data_t>(),
                         upper.data<data_t>(), bins, slot.data<int32_t>(), pred.numel());
  }));
  return {slot};
}

std::vector<paddle::Tensor> GhmCounts(const paddle::Tensor& pred, const paddle::Tensor& target,
                                      const paddle::Tensor& label_weight, const paddle::Tensor& upper, int bins) {
  check_inputs(pred, target, label_weight, upper, bins);
  auto counts = paddle::empty({bins}, paddle::DataType::INT64, pred.place());
  PD_DISPATCH_FLOATING_TYPES(pred.type(), "ghm_counts", ([&] {
    counts_kernel<data_t>(pred.data<data_t>(), target.data<data_t>(), label_weight.data<data_t>(),
                          upper.data<data_t>(), bins, counts.data<int64_t>(), pred.numel());
  }));
  return {counts};
}

std::vector<paddle::Tensor> GhmHarmonizedBce(const paddle::Tensor& pred, const paddle::Tensor& target,
                                             const paddle::Tensor& label_weight, const paddle::Tensor& upper,
                                             const paddle::Tensor& table, int bins) {
  check_inputs(pred, target, label_weight, upper, bins);
  PD_CHECK(table.is_cpu() && table.dtype() == pred.dtype(), "table must be a CPU tensor of pred's dtype");
  PD_CHECK(table.numel() == bins + 1, "table must hold bins + 1 weights (the last for \"no bin\")");
  auto grad = paddle::empty(pred.shape(), pred.dtype(), pred.place());
  auto loss = paddle::empty({}, pred.dtype(), pred.place());
  PD_DISPATCH_FLOATING_TYPES(pred.type(), "ghm_harmonized_bce", ([&] {
    const double sum = bce_kernel<data_t>(pred.data<data_t>(), target.data<data_t>(), label_weight.data<data_t>(),
                                          upper.data<data_t>(), bins, table.data<data_t>(), grad.data<data_t>(),
                                          pred.numel());
    loss.data<data_t>()[0] = static_cast<data_t>(sum);
  }));
  return {loss, grad};
}

PD_BUILD_OP(ghm_slots)
    .Inputs({"Pred", "Target", "LabelWeight", "Upper"})
    .Outputs({"Slot"})
    .Attrs({"bins: int"})
    .SetKernelFn(PD_KERNEL(GhmSlots));

PD_BUILD_OP(ghm_counts)
    .Inputs({"Pred", "Target", "LabelWeight", "Upper"})
    .Outputs({"Counts"})
    .Attrs({"bins: int"})
    .SetKernelFn(PD_KERNEL(GhmCounts));

PD_BUILD_OP(ghm_harmonized_bce)
    .Inputs({"Pred", "Target", "LabelWeight", "Upper", "Table"})
    .Outputs({"Loss", "Grad"})
    .Attrs({"bins: int"})
    .SetKernelFn(PD_KERNEL(GhmHarmonizedBce));
