// bnb8 — per-element optimizer update rules, shared by the CPU and CUDA kernels.
//
// A rule advances its states (fp32 values, dequantized by the caller) with one gradient element and
// returns the update direction u. Every family then applies the same step:
//     p <- p * decay - step_size * uscale * u
// decay carries decoupled weight decay (1 - lr * wd, or 1), step_size the learning rate with any bias
// correction, and uscale the per-tensor scale from max_unorm or a trust ratio (1 otherwise).
// A kernel walks blocks, dequantizes, calls the rule, and requantizes; it never knows the family.
//
// Every fused multiply-add is written out (mul_add) and the CPU kernels are built with
// -ffp-contract=off, so a rule rounds the same in every loop that inlines it and on every instruction
// set with FMA: left to the compiler, which products got fused depended on the surrounding loop.
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
  float alpha = 0.0f;                  // AdEMAMix mix / RMSprop smoothing / LAMB decoupled decay
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
  return mul_add(p, h.decay, -(h.step_size * uscale) * u);
}

// Coupled (L2) weight decay: g + weight_decay * p, and g itself when weight_decay is 0 — as torch skips
// the term, so an infinite parameter is not turned into NaN by 0 * inf. Both values, then a select on
// the uniform condition: GCC keeps that form vectorised (a ternary around the expression did not).
BNB8_HD float with_l2(float g, float p, const Hyper& h) {
  const float decayed = mul_add(h.weight_decay, p, g);
  return h.weight_decay != 0.0f ? decayed : g;
}

// The moving average and the bias-corrected direction of Adam, shared by the Adam-like rules.
// Plain value functions: a helper writing through float& references made GCC's loop 1.7x slower.
BNB8_HD float ema(float beta, float average, float x) { return mul_add(beta, average, (1.0f - beta) * x); }

// m / (sqrt(v) / bc2 + eps), as torch writes it, with one division instead of two: the divider, not
// the vector pipes, bounded the update loop (8-bit Adam step 1.67 -> 1.56 ns per element in cache).
// Equal up to float rounding; eps * bc2 is loop-invariant.
BNB8_HD float adam_direction(float m, float v, const Hyper& h) {
  return (m * h.bias_correction2_sqrt) / (sqrtf(v) + h.eps * h.bias_correction2_sqrt);
}

// Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019): state 0 = first moment (signed map),
// state 1 = second moment (unsigned map). Coupled L2 decay enters the gradient, as in torch.optim.Adam.
struct AdamRule {
  static constexpr const char* kName = "adam";
  static constexpr int kStates = 2;
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g = with_l2(g, p, h);
    s[0] = ema(h.beta1, s[0], g);
    s[1] = ema(h.beta2, s[1], g * g);
    return adam_direction(s[0], s[1], h);
  }
};

// Adam with AMSGrad (Reddi et al. 2018): state 2 keeps the running maximum of the second moment.
struct AdamAmsgradRule {
  static constexpr const char* kName = "adam_amsgrad";
  static constexpr int kStates = 3;
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g = with_l2(g, p, h);
    s[0] = ema(h.beta1, s[0], g);
    s[1] = ema(h.beta2, s[1], g * g);
    s[2] = s[2] > s[1] ? s[2] : s[1];  // max; a ternary vectorises, fmaxf does not
    return adam_direction(s[0], s[2], h);
  }
};

// SGD with momentum (torch.optim.SGD): state 0 = momentum buffer (signed map). As in torch, the first
// step sets the buffer to the gradient; nesterov looks ahead along the new buffer. (momentum = 0 keeps
// no state and never reaches a kernel: bnb8/optim/sgd.py.) LARS uses this rule plus max_unorm.
struct SgdRule {
  static constexpr const char* kName = "sgd";
  static constexpr int kStates = 1;
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g = with_l2(g, p, h);
    // torch's first buffer is the gradient itself: the state starts at 0 and Python passes
    // dampening = 0 on the first step, so no per-element test of h.step is needed (one made
    // the vectorised loop 40 % slower).
    s[0] = mul_add(h.momentum, s[0], (1.0f - h.dampening) * g);
    const float lookahead = mul_add(h.momentum, s[0], g);  // computed unconditionally, then selected
    return h.nesterov ? lookahead : s[0];
  }
};

// RMSprop (Hinton 2012; torch.optim.RMSprop): state 0 = running mean of g^2 (unsigned map); with
// momentum, state 1 = momentum buffer of g / avg; when centered, the last state = running mean of g
// (signed maps). The centered variance is clamped at 0: dequantized states can make it slightly negative.
template <bool kCentered, bool kMomentum>
struct RMSpropRuleT {
  static constexpr const char* kName = kCentered ? (kMomentum ? "rmsprop_centered_momentum" : "rmsprop_centered")
                                                 : (kMomentum ? "rmsprop_momentum" : "rmsprop");
  static constexpr int kStates = 1 + int(kCentered) + int(kMomentum);
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g = with_l2(g, p, h);
    s[0] = ema(h.alpha, s[0], g * g);
    float var = s[0];
    if constexpr (kCentered) {
      constexpr int c = kStates - 1;
      s[c] = ema(h.alpha, s[c], g);
      var = mul_add(-s[c], s[c], var);
      var = var > 0.0f ? var : 0.0f;
    }
    const float d = g / (sqrtf(var) + h.eps);
    if constexpr (kMomentum) {
      s[1] = mul_add(h.momentum, s[1], d);
      return s[1];
    }
    return d;
  }
};
using RMSpropRule = RMSpropRuleT<false, false>;
using RMSpropMomentumRule = RMSpropRuleT<false, true>;
using RMSpropCenteredRule = RMSpropRuleT<true, false>;
using RMSpropCenteredMomentumRule = RMSpropRuleT<true, true>;

// Adagrad (Duchi et al. 2011; torch.optim.Adagrad): state 0 = sum of g^2 (unsigned map). The learning
// rate decay lr / (1 + (step - 1) * lr_decay) is the step size.
struct AdagradRule {
  static constexpr const char* kName = "adagrad";
  static constexpr int kStates = 1;
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g = with_l2(g, p, h);
    s[0] = mul_add(g, g, s[0]);
    return g / (sqrtf(s[0]) + h.eps);
  }
};

// Lion (Chen et al. 2023): u = sign(beta1 * m + (1 - beta1) * g), then m <- beta2 * m + (1 - beta2) * g.
// State 0 = m (signed map); weight decay is decoupled (decay = 1 - lr * wd).
struct LionRule {
  static constexpr const char* kName = "lion";
  static constexpr int kStates = 1;
  BNB8_HD static float direction(float g, float, float (&s)[kStates], const Hyper& h) {
    const float c = ema(h.beta1, s[0], g);
    s[0] = ema(h.beta2, s[0], g);
    return c > 0.0f ? 1.0f : (c < 0.0f ? -1.0f : 0.0f);
  }
};

// LAMB (You et al. 2020): Adam's direction plus decoupled weight decay, u = m / (sqrt(v_hat) + eps)
// + alpha * p, scaled per tensor by the trust ratio ||p|| / ||u|| (uscale, from the norms pass).
// Bias correction 1 is folded out of u (the trust ratio does not depend on the scale of u), so Python
// passes alpha = weight_decay * (1 - beta1^step). weight_decay (coupled) is LAMB's L2 mode.
struct LambRule {
  static constexpr const char* kName = "lamb";
  static constexpr int kStates = 2;
  BNB8_HD static float direction(float g, float p, float (&s)[kStates], const Hyper& h) {
    g = with_l2(g, p, h);
    s[0] = ema(h.beta1, s[0], g);
    s[1] = ema(h.beta2, s[1], g * g);
    return mul_add(h.alpha, p, adam_direction(s[0], s[1], h));
  }
};

// AdEMAMix (Pagliardini et al. 2024): state 0 = fast EMA m1 (beta1, signed), state 1 = second moment
// nu (beta2, unsigned), state 2 = slow EMA m2 (beta3, signed). u = (m1 + alpha * m2) / (sqrt(nu_hat)
// + eps) with step_size = lr / (1 - beta1^step) and alpha = alpha_t * (1 - beta1^step), which is the
// paper's (m1_hat + alpha_t * m2) / (sqrt(nu_hat) + eps). Decoupled weight decay.
struct AdEMAMixRule {
  static constexpr const char* kName = "ademamix";
  static constexpr int kStates = 3;
  BNB8_HD static float direction(float g, float, float (&s)[kStates], const Hyper& h) {
    s[0] = ema(h.beta1, s[0], g);
    s[1] = ema(h.beta2, s[1], g * g);
    s[2] = ema(h.beta3, s[2], g);
    return adam_direction(mul_add(h.alpha, s[2], s[0]), s[1], h);
  }
};

// Every rule the kernels are instantiated for: X(RuleType). Adding a family = a struct above + a line here.
#define BNB8_FOR_EACH_RULE(X)     \
  X(AdamRule)                     \
  X(AdamAmsgradRule)              \
  X(SgdRule)                      \
  X(RMSpropRule)                  \
  X(RMSpropMomentumRule)          \
  X(RMSpropCenteredRule)          \
  X(RMSpropCenteredMomentumRule)  \
  X(AdagradRule)                  \
  X(LionRule)                     \
  X(LambRule)                     \
  X(AdEMAMixRule)

}  // namespace bnb8
