// GHM-C's two passes over anchors x classes as fused CPU kernels (see ghm_kernel.py for why and how they load).
//
// ghm_slots: slot of every element from pred, target, label_weight: its bin k (edges[k] <= g < edges[k + 1],
//   g = |sigmoid(pred) - target|) by the rule of ghm.bin_slot (floor of g * bins * (1 - 2^-20), then one
//   comparison with the next edge), or `bins` ("no bin") where label_weight <= 0.
// ghm_harmonized_bce: sum(table[slot] * BCE-with-logits(pred, target)) and its gradient w.r.t. pred,
//   (sigmoid(pred) - target) * table[slot], in one pass.
//
// Both loops are written so that GCC vectorises them (-O3 -fopenmp-simd): no branches, only selects, and
// exp/log calls that resolve to glibc's vector math library (libmvec), declared below as SIMD functions
// because glibc's own headers only do so under -ffast-math, which would also let GCC simplify away the
// log1p correction. The loss is accumulated in double, block by block.
#include <cmath>
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

template <typename T>
void slots_kernel(const T* x, const T* t, const T* w, const T* upper, int32_t* slot, int64_t n, int32_t bins) {
  const T scale = T(bins) * T(1.0 - 1.0 / 1048576.0);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T g = std::abs(sigmoid_from(x[i], std::exp(-std::abs(x[i]))) - t[i]);
    int32_t j = static_cast<int32_t>(g * scale);          // g in [0, 1] (checked inputs): j in [0, bins - 1]
    j = j < 0 ? 0 : (j < bins ? j : bins - 1);            // never read outside the table, even for NaN
    const T next_edge = upper[j];
    const int32_t k = g >= next_edge ? j + 1 : j;
    slot[i] = w[i] > T(0) ? k : bins;
  }
}

// log1p(e) for e in [0, 1] from log: u = 1 + e rounds, log(u) - ((u - 1) - e) / u undoes the rounding to
// first order (exact enough that BCE of confident logits keeps its relative accuracy; u = 1 gives e).
template <typename T>
double bce_kernel(const T* x, const T* t, const int32_t* slot, const T* table, int64_t table_size, T* grad,
                  int64_t n) {
  const uint32_t last = static_cast<uint32_t>(table_size - 1);
  double total = 0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t end = start + kBlock < n ? start + kBlock : n;
    double part = 0;
#pragma omp simd reduction(+ : part)
    for (int64_t i = start; i < end; ++i) {
      const uint32_t s = static_cast<uint32_t>(slot[i]);
      const T w = table[s <= last ? s : last];                // never read past the table, whatever the input
      const T e = std::exp(-std::abs(x[i]));
      const T u = T(1) + e;
      const T log1p_e = std::log(u) - ((u - T(1)) - e) / u;
      const T relu = x[i] > T(0) ? x[i] : T(0);
      grad[i] = (sigmoid_from(x[i], e) - t[i]) * w;
      part += static_cast<double>((log1p_e + (relu - x[i] * t[i])) * w);   // see ghm.HarmonizedBCE
    }
    total += part;
  }
  return total;
}

void check_like(const paddle::Tensor& a, const char* name, const paddle::Tensor& pred) {
  PD_CHECK(a.is_cpu(), name, " must be a CPU tensor");
  PD_CHECK(a.shape() == pred.shape(), name, " must have pred's shape");
}

}  // namespace

std::vector<paddle::Tensor> GhmSlots(const paddle::Tensor& pred, const paddle::Tensor& target,
                                     const paddle::Tensor& label_weight, const paddle::Tensor& upper, int bins) {
  check_like(pred, "pred", pred);
  check_like(target, "target", pred);
  check_like(label_weight, "label_weight", pred);
  PD_CHECK(target.dtype() == pred.dtype() && label_weight.dtype() == pred.dtype() && upper.dtype() == pred.dtype(),
           "target, label_weight and upper must have pred's dtype");
  PD_CHECK(bins >= 1 && upper.numel() >= bins, "upper must hold at least `bins` edges");
  auto slot = paddle::empty(pred.shape(), paddle::DataType::INT32, pred.place());
  PD_DISPATCH_FLOATING_TYPES(pred.type(), "ghm_slots", ([&] {
    slots_kernel<data_t>(pred.data<data_t>(), target.data<data_t>(), label_weight.data<data_t>(),
                         upper.data<data_t>(), slot.data<int32_t>(), pred.numel(), bins);
  }));
  return {slot};
}

std::vector<paddle::Tensor> GhmHarmonizedBce(const paddle::Tensor& pred, const paddle::Tensor& target,
                                             const paddle::Tensor& slot, const paddle::Tensor& table) {
  check_like(pred, "pred", pred);
  check_like(target, "target", pred);
  check_like(slot, "slot", pred);
  PD_CHECK(target.dtype() == pred.dtype() && table.dtype() == pred.dtype(), "target and table must have pred's dtype");
  PD_CHECK(slot.dtype() == paddle::DataType::INT32, "slot must be int32");
  PD_CHECK(table.numel() >= 1, "table must not be empty");
  auto grad = paddle::empty(pred.shape(), pred.dtype(), pred.place());
  auto loss = paddle::empty({}, pred.dtype(), pred.place());
  PD_DISPATCH_FLOATING_TYPES(pred.type(), "ghm_harmonized_bce", ([&] {
    const double sum = bce_kernel<data_t>(pred.data<data_t>(), target.data<data_t>(), slot.data<int32_t>(),
                                          table.data<data_t>(), table.numel(), grad.data<data_t>(),
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

PD_BUILD_OP(ghm_harmonized_bce)
    .Inputs({"Pred", "Target", "Slot", "Table"})
    .Outputs({"Loss", "Grad"})
    .SetKernelFn(PD_KERNEL(GhmHarmonizedBce));
