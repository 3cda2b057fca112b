// bnb8 — per-element optimizer update rules, shared by the CPU and CUDA kernels.
//
// A rule advances its states (fp32 values, dequantized by the caller) with one gradient element and
// returns the update direction u. Every family then applies the same step:
//     p <- p * decay - step_size * uscale * u
// decay carries decoupled weight decay (1 - lr * wd, or 1), step_size the learning rate with any bias
// correction, and uscale the per-tensor scale from max_unorm or a trust ratio (1 otherwise).
// A kernel walks blocks, dequantizes, calls the rule, and requantizes; it never knows the family.
#pragma once

#include "bnb8/common.h"

namespace bnb8 {

// Hyper-parameters of one multi-tensor call; Python fills the fields a family uses (bnb8/_native.py).
struct Hyper {
  float step_size = 0.0f;              // multiplies u (lr, or lr / bias_correction1)
  float decay = 1.0f;                  // decoupled weight decay factor, applied before the update
  float weight_decay = 0.0f;           // coupled (L2) weight decay, added to the gradient
  float beta1 = 0.0f, beta2 = 0.0f, beta3 = 0.0f;
  float eps = 0.0f;
  float bias_correction2_sqrt = 1.0f;  // sqrt(1 - beta2^step) for Adam-like rules
  float alpha = 0.0f;                  // AdEMAMix mix / RMSprop smoothing
  float momentum = 0.0f, dampening = 0.0f;
  float lr = 0.0f;                     // the plain learning rate, for rules that need it
  int32_t step = 1;                    // 1 on the first update
  int32_t nesterov = 0, centered = 0;
  int32_t skip_zeros = 0;              // leave elements whose gradient is exactly 0 untouched
};

// Whether an element is updated: never for a NaN/Inf gradient (its block's absmax must stay finite),
// and not for a zero gradient when skip_zeros is set.
BNB8_HD bool updates_element(float g, const Hyper& h) { return is_finite(g) && !(h.skip_zeros && g == 0.0f); }

BNB8_HD float apply_update(float p, float u, float uscale, const Hyper& h) {
  return p * h.decay - h.step_size * uscale * u;
}

// Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): state 0 = first moment (signed map),
// state 1 = second moment (unsigned map). Coupled L2 decay enters the gradient, as in torch.optim.Adam.
struct AdamRule {
  static constexpr const char* kName = "adam";
  static constexpr int kStates = 2;
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g += h.weight_decay * p;
    s[0] = h.beta1 * s[0] + (1.0f - h.beta1) * g;
    s[1] = h.beta2 * s[1] + (1.0f - h.beta2) * g * g;
    return s[0] / (sqrtf(s[1]) / h.bias_correction2_sqrt + h.eps);
  }
};

// Adam with AMSGrad (Reddi et al. 2018): state 2 keeps the running maximum of the second moment.
struct AdamAmsgradRule {
  static constexpr const char* kName = "adam_amsgrad";
  static constexpr int kStates = 3;
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g += h.weight_decay * p;
    s[0] = h.beta1 * s[0] + (1.0f - h.beta1) * g;
    s[1] = h.beta2 * s[1] + (1.0f - h.beta2) * g * g;
    s[2] = s[2] > s[1] ? s[2] : s[1];  // max; a ternary vectorises, fmaxf does not
    return s[0] / (sqrtf(s[2]) / h.bias_correction2_sqrt + h.eps);
  }
};

// Every rule the kernels are instantiated for: X(RuleType). Adding a family = a struct above + a line here.
#define BNB8_FOR_EACH_RULE(X) \
  X(AdamRule)                 \
  X(AdamAmsgradRule)

}  // namespace bnb8
