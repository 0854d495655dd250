// Batch-1 online SGD for a ReLU MLP: K sequential examples per call, no autograd.
//
// For each example: forward (prediction made before the update), the loss's gradient
// (softmax cross-entropy, or with ``mse`` SC's bp_mse: mean over the classes of
// (z - one_hot)^2, gradient 2 (z - one_hot) / classes as torch's mse_loss), then one
// fused pass per layer that reads every weight once to form the back-propagated
// gradient W^T g (with the weights *before* the update, as autograd does) and applies
// the coupled-L2 SGD update
//     W <- W - lr * (g h^T + weight_decay * W),   b <- b - lr * (g + weight_decay * b).
// Continual Backprop's per-step bookkeeping (Dohare et al. 2024, Methods; LoP's
// gnt.py) is fused too: ages, running mean activation, running utility and the
// fractional replacement accumulator. When a replacement is due the call returns early
// so Python can replace the units (rare: every ~1/(rr * units) steps).
//
// The first layer and large layers (>= 2^18 weights, beyond the L2 cache) defer their
// updates: in a call the true weights are W_true = scale * (W - sum_j u_j h_j^T) over
// the last m < 16 examples' (u_j, h_j), so forward and backward read W once each and
// use rank-m corrections, and W is rewritten once every 16 examples instead of every
// example (L2's decay is the scalar ``scale``). The same algebra, other rounding. With
// CBP only the first layer defers (the utility reads the true outgoing weights every
// step), and not with its adaptable utility (which reads the incoming ones).
//
// With ``anchor_w``/``anchor_b`` (non-null; L2 Init, Kumar et al. 2023) every update
// also pulls toward those stored initial values: W <- W - lr * (... + anchor * (W - W0)).
// Then no layer defers its updates (the pull is not a scalar decay).
//
// With ``w_target``/``ln_target`` (non-null; Normalize-and-Project, Lyle et al. 2024)
// after its update each weight matrix with a target > 0 is rescaled to that Frobenius
// norm, and each LayerNorm's scale and shift, jointly, to theirs. Then too no layer
// defers its updates.
//
// With ``crelu`` the hidden activation is concatenated ReLU, interleaved as
// clenv.models.CReLU: unit o gives features 2o = relu(z_o) and 2o + 1 = relu(-z_o), so
// the next layer reads twice the units.
//
// With ``ln_w``/``ln_b`` (non-null), each hidden layer is Linear -> LayerNorm -> ReLU
// (torch.nn.LayerNorm over the units, biased variance, affine scale and shift): the
// forward keeps the normalised pre-activations and 1/std, the backward turns the
// ReLU's gradient into the pre-norm one with the old scale and applies the same
// coupled-L2 SGD update to the scale and shift.
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

template <typename T>
void forward_layer_raw(const T* W, const T* x, T* z, int64_t out, int64_t in) {
  for (int64_t o = 0; o < out; ++o) {
    const T* row = W + o * in;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < in; ++i) s += row[i] * x[i];
    z[o] = s;
  }
}

// The first layer on a sparse input (MNIST pixels are ~80% zero): only the nonzero
// inputs ``nz[0..n_nz)`` are read.
template <typename T>
void forward_layer_sparse(const T* W, const T* b, const T* x, const int64_t* nz,
                          int64_t n_nz, T* z, int64_t out, int64_t in, bool relu) {
  for (int64_t o = 0; o < out; ++o) {
    const T* row = W + o * in;
    T s = 0;
    for (int64_t j = 0; j < n_nz; ++j) s += row[nz[j]] * x[nz[j]];
    s += b[o];
    z[o] = (relu && s < 0) ? T(0) : s;
  }
}

// LayerNorm then ReLU in place on the pre-activations z: keeps the normalised values
// in ``nhat`` and returns 1 / sqrt(var + eps) (torch.nn.LayerNorm: biased variance).
template <typename T>
T layer_norm_relu(T* z, const T* gamma, const T* beta, T* nhat, int64_t n, T eps) {
  T mean = 0;
  for (int64_t o = 0; o < n; ++o) mean += z[o];
  mean /= T(n);
  T var = 0;
  for (int64_t o = 0; o < n; ++o) var += (z[o] - mean) * (z[o] - mean);
  var /= T(n);
  const T inv_std = T(1) / std::sqrt(var + eps);
  for (int64_t o = 0; o < n; ++o) {
    nhat[o] = (z[o] - mean) * inv_std;
    const T a = gamma[o] * nhat[o] + beta[o];
    z[o] = a < 0 ? T(0) : a;
  }
  return inv_std;
}

// d holds the gradient with respect to the activation's output (its features); it
// becomes, in place, scale times the gradient with respect to its input (the units).
// ReLU: d_i [h_i > 0]. CReLU: d_2o [z_o > 0] - d_2o+1 [z_o < 0], read off the features.
template <typename T>
void activation_backward(T* d, const T* act, int64_t units, T scale, bool crelu) {
  if (crelu) {
    for (int64_t o = 0; o < units; ++o) {  // writes d[o] after reading d[2o], d[2o+1]
      const T pos = act[2 * o] > T(0) ? d[2 * o] : T(0);
      const T neg = act[2 * o + 1] > T(0) ? d[2 * o + 1] : T(0);
      d[o] = scale * (pos - neg);
    }
    return;
  }
  for (int64_t i = 0; i < units; ++i) d[i] = act[i] > T(0) ? scale * d[i] : T(0);
}

// Rescale a (and b, jointly) to the Euclidean norm ``target``.
template <typename T>
void project_to_norm(T* a, int64_t na, T* b, int64_t nb, double target) {
  T sum = 0;
  for (int64_t i = 0; i < na; ++i) sum += a[i] * a[i];
  for (int64_t i = 0; i < nb; ++i) sum += b[i] * b[i];
  const T factor = T(target) / std::sqrt(sum);
#pragma omp simd
  for (int64_t i = 0; i < na; ++i) a[i] *= factor;
  for (int64_t i = 0; i < nb; ++i) b[i] *= factor;
}

// d holds the gradient with respect to the LayerNorm's output (the ReLU's mask
// applied); it becomes the gradient with respect to its input, with the old scale,
// and then the scale and shift take their coupled-L2 SGD step.
template <typename T>
void layer_norm_backward_update(T* d, T* gamma, T* beta, const T* nhat, T inv_std,
                                int64_t n, T lr, T wd) {
  T mean_dn = 0, mean_dn_nhat = 0;
  for (int64_t o = 0; o < n; ++o) {
    const T dn = d[o] * gamma[o];
    mean_dn += dn;
    mean_dn_nhat += dn * nhat[o];
  }
  mean_dn /= T(n);
  mean_dn_nhat /= T(n);
  for (int64_t o = 0; o < n; ++o) {
    const T da = d[o];
    d[o] = inv_std * (da * gamma[o] - mean_dn - nhat[o] * mean_dn_nhat);
    gamma[o] = gamma[o] - lr * (da * nhat[o] + wd * gamma[o]);
    beta[o] = beta[o] - lr * (da + wd * beta[o]);
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
                           int64_t in, T lr, T wd, T* in_abs, T* out_abs,
                           const T* W0, const T* b0, T anchor) {
  if (d) std::fill(d, d + in, T(0));
  if (out_abs) std::fill(out_abs, out_abs + in, T(0));
  for (int64_t o = 0; o < out; ++o) {
    T* row = W + o * in;
    const T go = g[o];
    // A row with no gradient and no decay does not move (a dead unit): skip its update
    // but still count its weight magnitudes.
    const bool moves = !(go == T(0) && wd == T(0) && W0 == nullptr);
    if (moves) {
      if (d) {
#pragma omp simd
        for (int64_t i = 0; i < in; ++i) d[i] += row[i] * go;
      }
      if (W0) {
        const T* row0 = W0 + o * in;
#pragma omp simd
        for (int64_t i = 0; i < in; ++i)
          row[i] = row[i] - lr * (go * h[i] + wd * row[i] + anchor * (row[i] - row0[i]));
      } else {
#pragma omp simd
        for (int64_t i = 0; i < in; ++i) row[i] = row[i] - lr * (go * h[i] + wd * row[i]);
      }
    }
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
    if (moves) b[o] = b[o] - lr * (go + wd * b[o] + (b0 ? anchor * (b[o] - b0[o]) : T(0)));
  }
  if (out_abs) {
    for (int64_t i = 0; i < in; ++i) out_abs[i] /= T(out);
  }
}

constexpr int64_t kLazy = 16;

// Deferred rank-1 updates of one layer (see the header).
template <typename T>
struct LazyLayer {
  bool on = false;
  int64_t out = 0, in = 0, m = 0;
  T scale = T(1);
  std::vector<T> U, H, coef;  // kLazy x out, kLazy x in, kLazy

  void init(int64_t o, int64_t i) {
    on = true;
    out = o;
    in = i;
    U.resize(kLazy * o);
    H.resize(kLazy * i);
    coef.resize(kLazy);
  }

  // z += -sum_j u_j (h_j . x): the pending updates' effect on a pre-activation.
  void correct_forward(const T* x, T* z) {
    for (int64_t j = 0; j < m; ++j) {
      const T* hj = H.data() + j * in;
      T a = 0;
#pragma omp simd reduction(+ : a)
      for (int64_t i = 0; i < in; ++i) a += hj[i] * x[i];
      const T* uj = U.data() + j * out;
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) z[o] -= a * uj[o];
    }
  }

  // s += -sum_j h_j (u_j . g): the pending updates' effect on W^T g.
  void correct_backward(const T* g, T* s) {
    for (int64_t j = 0; j < m; ++j) {
      const T* uj = U.data() + j * out;
      T beta = 0;
#pragma omp simd reduction(+ : beta)
      for (int64_t o = 0; o < out; ++o) beta += uj[o] * g[o];
      const T* hj = H.data() + j * in;
#pragma omp simd
      for (int64_t i = 0; i < in; ++i) s[i] -= beta * hj[i];
    }
  }

  // W_true' = c W_true - lr g h^T  <=>  scale' = c scale, u_m = (lr / scale') g.
  void record(const T* g, const T* h, T lr, T wd, T* W) {
    scale *= T(1) - lr * wd;
    const T c = lr / scale;
    T* um = U.data() + m * out;
    for (int64_t o = 0; o < out; ++o) um[o] = c * g[o];
    std::copy(h, h + in, H.data() + m * in);
    if (++m == kLazy) flush(W);
  }

  void flush(T* W) {
    if (m == 0 && scale == T(1)) return;
    for (int64_t o = 0; o < out; ++o) {
      T* row = W + o * in;
      for (int64_t j = 0; j < m; ++j) {
        const T uj = U[j * out + o];
        if (uj == T(0)) continue;
        const T* hj = H.data() + j * in;
#pragma omp simd
        for (int64_t i = 0; i < in; ++i) row[i] -= uj * hj[i];
      }
      if (scale != T(1)) {
#pragma omp simd
        for (int64_t i = 0; i < in; ++i) row[i] *= scale;
      }
    }
    m = 0;
    scale = T(1);
  }
};

// out[j * rows + o] = W[o] . x_j for `count` consecutive inputs x_j (row-major, each
// `in` long): every row of W is read once for all of them.
template <typename T>
void block_products(const T* W, const T* X, T* out, int64_t count, int64_t rows,
                    int64_t in) {
  for (int64_t o = 0; o < rows; ++o) {
    const T* row = W + o * in;
    for (int64_t j = 0; j < count; ++j) {
      const T* x = X + j * in;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < in; ++i) s += row[i] * x[i];
      out[j * rows + o] = s;
    }
  }
}

// W^T g of the stored W, skipping rows where g is zero (inactive ReLUs).
template <typename T>
void transpose_matvec(const T* W, const T* g, T* s, int64_t out, int64_t in) {
  std::fill(s, s + in, T(0));
  for (int64_t o = 0; o < out; ++o) {
    const T go = g[o];
    if (go == T(0)) continue;
    const T* row = W + o * in;
#pragma omp simd
    for (int64_t i = 0; i < in; ++i) s[i] += row[i] * go;
  }
}

template <typename T>
int64_t train_chunk_impl(int64_t n_layers, const int64_t* width, T** Wp, T** bp,
                         const T* X, const int64_t* Y, int64_t* P, T* Lo, int64_t K,
                         int64_t start, double lr_, double wd_, T** ages, T** utils,
                         T** mean_acts, double* acc, double decay_, int64_t maturity,
                         double replacement_rate, int adaptable, int mse, T** ln_w,
                         T** ln_b, double ln_eps, T** anchor_w, T** anchor_b,
                         double anchor_, const double* w_target,
                         const double* ln_target, int crelu) {
  const T lr = T(lr_), wd = T(wd_), decay = T(decay_), eps = T(ln_eps);
  const T anchor = T(anchor_);
  const bool ln = ln_w != nullptr, anchored = anchor_w != nullptr;
  const int64_t n_hidden = n_layers - 1;
  const int64_t D = width[0];
  const bool cbp = ages != nullptr;
  const int64_t classes = width[n_layers];
  // Each layer's inputs: the features of the layer below (two per unit with CReLU).
  const int64_t mult = crelu ? 2 : 1;
  std::vector<int64_t> in_dim(n_layers);
  for (int64_t l = 0; l < n_layers; ++l) in_dim[l] = l == 0 ? D : mult * width[l];
  // Scratch: activations h[1..L] and gradients g[1..L] (the input plays h[0]).
  std::vector<std::vector<T>> h(n_layers + 1), g(n_layers + 1);
  for (int64_t l = 1; l <= n_layers; ++l) {
    h[l].resize(l < n_layers ? in_dim[l] : width[l]);
    g[l].resize(l < n_layers ? in_dim[l] : width[l]);
  }
  std::vector<int64_t> nz(D);
  // LayerNorm: each hidden layer's normalised pre-activations and 1/std.
  std::vector<std::vector<T>> nhat(ln ? n_hidden : 0);
  std::vector<T> inv_std(n_hidden);
  for (int64_t l = 0; ln && l < n_hidden; ++l) nhat[l].resize(width[l + 1]);
  std::vector<std::vector<T>> out_abs(n_hidden), in_abs(n_hidden);
  if (cbp) {
    for (int64_t l = 0; l < n_hidden; ++l) {
      out_abs[l].resize(width[l + 1]);
      if (adaptable) in_abs[l].resize(width[l + 1]);
    }
  }
  std::vector<LazyLayer<T>> lazy(n_layers);
  for (int64_t l = 0; l < n_layers; ++l) {
    // The first layer always (its sparse per-example update and products cost more
    // than the block products), unless CBP's adaptable utility needs its true incoming
    // weights every step; the others when large and CBP is off.
    if (anchored || w_target) continue;  // their updates read every weight anyway
    const bool first = l == 0 && n_layers > 1 && !(cbp && adaptable);
    if (first || (!cbp && in_dim[l] * width[l + 1] >= (int64_t(1) << 18)))
      lazy[l].init(width[l + 1], in_dim[l]);
  }
  // The first layer's raw products W x for the next examples, computed together after
  // each rewrite of its stored W (its inputs, unlike the other layers', are known in
  // advance): W is read once per 16 examples instead of once per example.
  std::vector<T> raw0(lazy[0].on ? kLazy * width[1] : 0);
  int64_t raw0_first = -1, raw0_count = 0;
  for (int64_t k = start; k < K; ++k) {
    const T* x = X + k * D;
    const int64_t y = Y[k];
    int64_t n_nz = 0;
    for (int64_t i = 0; i < D; ++i)
      if (x[i] != T(0)) nz[n_nz++] = i;
    const bool sparse = 2 * n_nz < D;
    // Forward. ReLU inside the layer's loop unless a LayerNorm comes first.
    const T* in_vec = x;
    for (int64_t l = 0; l < n_layers; ++l) {
      T* z = h[l + 1].data();
      const bool relu = l + 1 < n_layers && !ln && !crelu;
      if (lazy[l].on) {
        // Raw products with the stored W (sparse for the input), then corrections.
        if (l == 0) {
          if (k < raw0_first || k >= raw0_first + raw0_count) {
            raw0_first = k;
            raw0_count = std::min(kLazy, K - k);
            block_products<T>(Wp[0], x, raw0.data(), raw0_count, width[1], D);
          }
          const T* r = raw0.data() + (k - raw0_first) * width[1];
          std::copy(r, r + width[1], z);
        } else {
          forward_layer_raw<T>(Wp[l], in_vec, z, width[l + 1], in_dim[l]);
        }
        lazy[l].correct_forward(in_vec, z);
        const T scale = lazy[l].scale;
        for (int64_t o = 0; o < width[l + 1]; ++o) {
          const T v = scale * z[o] + bp[l][o];
          z[o] = (relu && v < 0) ? T(0) : v;
        }
      } else if (l == 0 && sparse && n_layers > 1) {
        forward_layer_sparse<T>(Wp[0], bp[0], x, nz.data(), n_nz, z, width[1], D,
                                relu);
      } else {
        forward_layer<T>(Wp[l], bp[l], in_vec, z, width[l + 1], in_dim[l], relu);
      }
      if (ln && l < n_hidden)
        inv_std[l] = layer_norm_relu<T>(z, ln_w[l], ln_b[l], nhat[l].data(),
                                        width[l + 1], eps);
      if (crelu && l < n_hidden) {
        for (int64_t o = width[l + 1] - 1; o >= 0; --o) {  // in place, from the top
          const T v = z[o];
          z[2 * o] = v < 0 ? T(0) : v;
          z[2 * o + 1] = v > 0 ? T(0) : -v;
        }
      }
      in_vec = z;
    }
    // Prediction (first maximum, as torch.argmax) and the loss's gradient.
    const T* z = h[n_layers].data();
    int64_t arg = 0;
    T zmax = z[0];
    for (int64_t c = 1; c < classes; ++c)
      if (z[c] > zmax || std::isnan(z[c])) { zmax = z[c]; arg = c; if (std::isnan(z[c])) break; }
    P[k] = arg;
    T* gL = g[n_layers].data();
    if (mse) {
      const T norm = T(2) / T(classes);
      T sum = 0;
      for (int64_t c = 0; c < classes; ++c) {
        const T diff = z[c] - (c == y ? T(1) : T(0));
        sum += diff * diff;
        gL[c] = norm * diff;
      }
      Lo[k] = sum / T(classes);
    } else {
      T sum = 0;
      for (int64_t c = 0; c < classes; ++c) {
        gL[c] = std::exp(z[c] - zmax);
        sum += gL[c];
      }
      for (int64_t c = 0; c < classes; ++c) gL[c] /= sum;
      Lo[k] = std::log(sum) + zmax - z[y];
      gL[y] -= T(1);
    }
    // d = W_l^T g_{l+1} (the gradient of layer l's input features) becomes the
    // gradient of hidden layer l-1's pre-activations, through its activation (times the
    // deferred layer's scale) and its LayerNorm, whose scale and shift then step.
    const auto to_pre_activation = [&](int64_t l, T* d, T scale) {
      activation_backward<T>(d, h[l].data(), width[l], scale, crelu);
      if (!ln) return;
      layer_norm_backward_update<T>(d, ln_w[l - 1], ln_b[l - 1], nhat[l - 1].data(),
                                    inv_std[l - 1], width[l], lr, wd);
      if (ln_target && ln_target[l - 1] > 0)
        project_to_norm<T>(ln_w[l - 1], width[l], ln_b[l - 1], width[l],
                           ln_target[l - 1]);
    };
    // Backward with fused updates, from the head down.
    for (int64_t l = n_layers - 1; l >= 0; --l) {
      const T* h_in = l == 0 ? x : h[l].data();
      T* d = l == 0 ? nullptr : g[l].data();
      if (lazy[l].on) {
        const T* gl = g[l + 1].data();
        if (d) {
          transpose_matvec<T>(Wp[l], gl, d, width[l + 1], in_dim[l]);
          lazy[l].correct_backward(gl, d);
          to_pre_activation(l, d, lazy[l].scale);
        }
        T* b = bp[l];
        for (int64_t o = 0; o < width[l + 1]; ++o) b[o] = b[o] - lr * (gl[o] + wd * b[o]);
        lazy[l].record(gl, h_in, lr, wd, Wp[l]);
        if (l == 0 && lazy[0].m == 0) raw0_first = -1;  // W rewritten: products stale
        continue;
      }
      T* oabs = (cbp && l >= 1) ? out_abs[l - 1].data() : nullptr;
      T* iabs = (cbp && adaptable && l < n_hidden) ? in_abs[l].data() : nullptr;
      if (l == 0 && sparse && wd == T(0) && iabs == nullptr && !anchored) {
        update_layer_sparse<T>(Wp[0], bp[0], x, nz.data(), n_nz, g[1].data(), width[1],
                               D, lr);
        if (w_target && w_target[0] > 0)
          project_to_norm<T>(Wp[0], width[0] * width[1], nullptr, 0, w_target[0]);
        continue;
      }
      backward_update_layer<T>(Wp[l], bp[l], h_in, g[l + 1].data(), d, width[l + 1],
                               in_dim[l], lr, wd, iabs, oabs,
                               anchored ? anchor_w[l] : nullptr,
                               anchored ? anchor_b[l] : nullptr, anchor);
      if (w_target && w_target[l] > 0)
        project_to_norm<T>(Wp[l], in_dim[l] * width[l + 1], nullptr, 0, w_target[l]);
      if (d) to_pre_activation(l, d, T(1));
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
    if (due) {  // Python replaces units next: it must see the true weights
      for (int64_t l = 0; l < n_layers; ++l)
        if (lazy[l].on) lazy[l].flush(Wp[l]);
      return k + 1;
    }
  }
  for (int64_t l = 0; l < n_layers; ++l)
    if (lazy[l].on) lazy[l].flush(Wp[l]);
  return K;
}

}  // namespace

#define CLENV_TRAIN_CHUNK(NAME, T)                                                    \
  extern "C" int64_t NAME(int64_t n_layers, const int64_t* width, T** W, T** b,      \
                          const T* X, const int64_t* Y, int64_t* P, T* losses,       \
                          int64_t K, int64_t start, double lr, double weight_decay,  \
                          T** ages, T** utils, T** mean_acts, double* acc,     \
                          double decay, int64_t maturity, double replacement_rate,   \
                          int adaptable, int mse, T** ln_w, T** ln_b,               \
                          double ln_eps, T** anchor_w, T** anchor_b, double anchor,  \
                          const double* w_target, const double* ln_target,          \
                          int crelu) {                                               \
    return train_chunk_impl<T>(n_layers, width, W, b, X, Y, P, losses, K, start, lr,  \
                               weight_decay, ages, utils, mean_acts, acc, decay,      \
                               maturity, replacement_rate, adaptable, mse, ln_w,      \
                               ln_b, ln_eps, anchor_w, anchor_b, anchor, w_target,    \
                               ln_target, crelu);                                     \
  }

CLENV_TRAIN_CHUNK(clenv_train_chunk_f32, float)
CLENV_TRAIN_CHUNK(clenv_train_chunk_f64, double)
