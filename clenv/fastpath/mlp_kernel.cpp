// Batch-1 online SGD for a ReLU MLP: K sequential examples per call, no autograd.
//
// For each example: forward (prediction made before the update), softmax
// cross-entropy gradient, then one fused pass per layer that reads every weight once
// to form the back-propagated gradient W^T g (with the weights *before* the update,
// as autograd does) and applies the coupled-L2 SGD update
//     W <- W - lr * (g h^T + weight_decay * W),   b <- b - lr * (g + weight_decay * b).
// Continual Backprop's per-step bookkeeping (Dohare et al. 2024, Methods; LoP's
// gnt.py) is fused too: ages, running mean activation, running utility and the
// fractional replacement accumulator. When a replacement is due the call returns early
// so Python can replace the units (rare: every ~1/(rr * units) steps).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename T>
void forward_layer(const T* W, const T* b, const T* x, T* z, int64_t out, int64_t in,
                   bool relu) {
  for (int64_t o = 0; o < out; ++o) {
    const T* row = W + o * in;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < in; ++i) s += row[i] * x[i];
    s += b[o];
    z[o] = (relu && s < 0) ? T(0) : s;
  }
}

// The first layer on a sparse input (MNIST pixels are ~80% zero): only the nonzero
// inputs ``nz[0..n_nz)`` are read.
template <typename T>
void forward_layer_sparse(const T* W, const T* b, const T* x, const int64_t* nz,
                          int64_t n_nz, T* z, int64_t out, int64_t in) {
  for (int64_t o = 0; o < out; ++o) {
    const T* row = W + o * in;
    T s = 0;
    for (int64_t j = 0; j < n_nz; ++j) s += row[nz[j]] * x[nz[j]];
    s += b[o];
    z[o] = s < 0 ? T(0) : s;
  }
}

// The first layer's update without weight decay: W[:, i] only changes where x_i != 0.
template <typename T>
void update_layer_sparse(T* W, T* b, const T* x, const int64_t* nz, int64_t n_nz,
                         const T* g, int64_t out, int64_t in, T lr) {
  for (int64_t o = 0; o < out; ++o) {
    const T go = g[o];
    if (go == T(0)) continue;
    T* row = W + o * in;
    for (int64_t j = 0; j < n_nz; ++j) row[nz[j]] = row[nz[j]] - lr * (go * x[nz[j]]);
    b[o] = b[o] - lr * go;
  }
}

// d = W^T g (old weights), then W, b updated in place; in_abs[o] / out_abs[i] receive
// mean |W_new| over each row / column when non-null (CBP's weight magnitudes).
template <typename T>
void backward_update_layer(T* W, T* b, const T* h, const T* g, T* d, int64_t out,
                           int64_t in, T lr, T wd, T* in_abs, T* out_abs) {
  if (d) std::fill(d, d + in, T(0));
  if (out_abs) std::fill(out_abs, out_abs + in, T(0));
  for (int64_t o = 0; o < out; ++o) {
    T* row = W + o * in;
    const T go = g[o];
    if (go == T(0) && wd == T(0)) {
      if (out_abs) {
#pragma omp simd
        for (int64_t i = 0; i < in; ++i) out_abs[i] += std::abs(row[i]);
      }
      if (in_abs) {
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < in; ++i) s += std::abs(row[i]);
        in_abs[o] = s / T(in);
      }
      continue;
    }
    if (d) {
#pragma omp simd
      for (int64_t i = 0; i < in; ++i) d[i] += row[i] * go;
    }
#pragma omp simd
    for (int64_t i = 0; i < in; ++i) row[i] = row[i] - lr * (go * h[i] + wd * row[i]);
    if (out_abs) {
#pragma omp simd
      for (int64_t i = 0; i < in; ++i) out_abs[i] += std::abs(row[i]);
    }
    if (in_abs) {
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < in; ++i) s += std::abs(row[i]);
      in_abs[o] = s / T(in);
    }
    b[o] = b[o] - lr * (go + wd * b[o]);
  }
  if (out_abs) {
    for (int64_t i = 0; i < in; ++i) out_abs[i] /= T(out);
  }
}

template <typename T>
int64_t train_chunk_impl(int64_t n_layers, const int64_t* width, T** Wp, T** bp,
                         const T* X, const int64_t* Y, int64_t* P, T* Lo, int64_t K,
                         int64_t start, double lr_, double wd_, T** ages, T** utils,
                         T** mean_acts, double* acc, double decay_, int64_t maturity,
                         double replacement_rate, int adaptable) {
  const T lr = T(lr_), wd = T(wd_), decay = T(decay_);
  const int64_t n_hidden = n_layers - 1;
  const int64_t D = width[0];
  const bool cbp = ages != nullptr;
  const int64_t classes = width[n_layers];
  // Scratch: activations h[1..L] and gradients g[1..L] (the input plays h[0]).
  std::vector<std::vector<T>> h(n_layers + 1), g(n_layers + 1);
  for (int64_t l = 1; l <= n_layers; ++l) {
    h[l].resize(width[l]);
    g[l].resize(width[l]);
  }
  std::vector<int64_t> nz(D);
  std::vector<std::vector<T>> out_abs(n_hidden), in_abs(n_hidden);
  if (cbp) {
    for (int64_t l = 0; l < n_hidden; ++l) {
      out_abs[l].resize(width[l + 1]);
      if (adaptable) in_abs[l].resize(width[l + 1]);
    }
  }
  for (int64_t k = start; k < K; ++k) {
    const T* x = X + k * D;
    const int64_t y = Y[k];
    int64_t n_nz = 0;
    for (int64_t i = 0; i < D; ++i)
      if (x[i] != T(0)) nz[n_nz++] = i;
    const bool sparse = 2 * n_nz < D;
    // Forward.
    const T* in_vec = x;
    for (int64_t l = 0; l < n_layers; ++l) {
      if (l == 0 && sparse && n_layers > 1) {
        forward_layer_sparse<T>(Wp[0], bp[0], x, nz.data(), n_nz, h[1].data(), width[1],
                                D);
        in_vec = h[1].data();
        continue;
      }
      forward_layer<T>(Wp[l], bp[l], in_vec, h[l + 1].data(), width[l + 1], width[l],
                       l + 1 < n_layers);
      in_vec = h[l + 1].data();
    }
    // Prediction (first maximum, as torch.argmax) and softmax cross-entropy gradient.
    const T* z = h[n_layers].data();
    int64_t arg = 0;
    T zmax = z[0];
    for (int64_t c = 1; c < classes; ++c)
      if (z[c] > zmax || std::isnan(z[c])) { zmax = z[c]; arg = c; if (std::isnan(z[c])) break; }
    P[k] = arg;
    T sum = 0;
    T* gL = g[n_layers].data();
    for (int64_t c = 0; c < classes; ++c) {
      gL[c] = std::exp(z[c] - zmax);
      sum += gL[c];
    }
    for (int64_t c = 0; c < classes; ++c) gL[c] /= sum;
    Lo[k] = std::log(sum) + zmax - z[y];
    gL[y] -= T(1);
    // Backward with fused updates, from the head down.
    for (int64_t l = n_layers - 1; l >= 0; --l) {
      const T* h_in = l == 0 ? x : h[l].data();
      T* d = l == 0 ? nullptr : g[l].data();
      T* oabs = (cbp && l >= 1) ? out_abs[l - 1].data() : nullptr;
      T* iabs = (cbp && adaptable && l < n_hidden) ? in_abs[l].data() : nullptr;
      if (l == 0 && sparse && wd == T(0) && iabs == nullptr) {
        update_layer_sparse<T>(Wp[0], bp[0], x, nz.data(), n_nz, g[1].data(), width[1],
                               D, lr);
        continue;
      }
      backward_update_layer<T>(Wp[l], bp[l], h_in, g[l + 1].data(), d, width[l + 1],
                               width[l], lr, wd, iabs, oabs);
      if (d) {
        const T* act = h[l].data();
        for (int64_t i = 0; i < width[l]; ++i)
          if (!(act[i] > T(0))) d[i] = T(0);
      }
    }
    if (!cbp) continue;
    // Continual Backprop bookkeeping, per hidden layer.
    bool due = false;
    for (int64_t l = 0; l < n_hidden; ++l) {
      T* age = ages[l];
      T* util = utils[l];
      T* mean_act = mean_acts[l];
      const T* act = h[l + 1].data();
      int64_t eligible = 0;
      for (int64_t i = 0; i < width[l + 1]; ++i) {
        age[i] += 1;
        util[i] *= decay;
        mean_act[i] = decay * mean_act[i] + (T(1) - decay) * act[i];
        T contribution;
        if (adaptable) {
          const T bias_correction = T(1) - std::pow(decay, age[i]);
          contribution = out_abs[l][i] * std::abs(act[i] - mean_act[i] / bias_correction) /
                         in_abs[l][i];
        } else {
          contribution = out_abs[l][i] * std::abs(act[i]);
        }
        util[i] += (T(1) - decay) * contribution;
        if (age[i] > maturity) ++eligible;
      }
      if (eligible > 0) {
        acc[l] += replacement_rate * double(eligible);
        if (acc[l] >= 1.0) due = true;
      }
    }
    if (due) return k + 1;
  }
  return K;
}

}  // namespace

#define CLENV_TRAIN_CHUNK(NAME, T)                                                    \
  extern "C" int64_t NAME(int64_t n_layers, const int64_t* width, T** W, T** b,      \
                          const T* X, const int64_t* Y, int64_t* P, T* losses,       \
                          int64_t K, int64_t start, double lr, double weight_decay,  \
                          T** ages, T** utils, T** mean_acts, double* acc,     \
                          double decay, int64_t maturity, double replacement_rate,   \
                          int adaptable) {                                           \
    return train_chunk_impl<T>(n_layers, width, W, b, X, Y, P, losses, K, start, lr,  \
                               weight_decay, ages, utils, mean_acts, acc, decay,      \
                               maturity, replacement_rate, adaptable);               \
  }

CLENV_TRAIN_CHUNK(clenv_train_chunk_f32, float)
CLENV_TRAIN_CHUNK(clenv_train_chunk_f64, double)
