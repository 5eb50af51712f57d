// Fused CPU selective scan core (Mamba / S6), forward and backward.
//
// Core computed (per batch b, channel d, state index n; group g = d / (dim / G)):
//   x_t[n] = exp(delta_t * A[d, n]) * x_{t-1}[n] + delta_t * u_t * B[b, g, t, n]
//   y_t    = sum_n C[b, g, t, n] * x_t[n]
// Layouts: u, delta, y: (batch, dim, L); A: (dim, N); Bt, Ct: (batch, G, L, N); last: (batch, dim, N).
// The forward keeps nothing but the inputs; the backward recomputes the states of one
// (b, d) row at a time into a per-thread buffer of (L + 1) * N values.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp for float in plain arithmetic so that the compiler vectorizes the loops calling it:
// x = k ln2 + r with |r| <= ln2 / 2 (two-constant Cody-Waite split), exp(r) by its degree-7
// Taylor polynomial (truncation ~5e-9 relative), then scaled by 2^k through the exponent bits.
inline float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float k = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(float));
  return p * scale;
}

template <typename scalar_t>
inline scalar_t exp_impl(scalar_t x) {
  return std::exp(x);
}

template <>
inline float exp_impl<float>(float x) {
  return exp_fast(x);
}

template <typename scalar_t>
void scan_fwd_kernel(const scalar_t* u, const scalar_t* delta, const scalar_t* A, const scalar_t* Bt,
                     const scalar_t* Ct, scalar_t* y, scalar_t* last, int64_t batch, int64_t dim, int64_t L,
                     int64_t N, int64_t G) {
  const int64_t per_group = dim / G;
  at::parallel_for(0, batch * dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> xbuf(N);
    scalar_t* x = xbuf.data();
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / dim, d = row % dim, g = d / per_group;
      const scalar_t* u_r = u + row * L;
      const scalar_t* dl_r = delta + row * L;
      const scalar_t* A_d = A + d * N;
      const scalar_t* B_r = Bt + (b * G + g) * L * N;
      const scalar_t* C_r = Ct + (b * G + g) * L * N;
      scalar_t* y_r = y + row * L;
      for (int64_t n = 0; n < N; ++n) x[n] = 0;
      for (int64_t t = 0; t < L; ++t) {
        const scalar_t dl = dl_r[t], du = dl * u_r[t];
        const scalar_t* B_t = B_r + t * N;
        const scalar_t* C_t = C_r + t * N;
        scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t xn = exp_impl<scalar_t>(dl * A_d[n]) * x[n] + du * B_t[n];
          x[n] = xn;
          acc += xn * C_t[n];
        }
        y_r[t] = acc;
      }
      std::memcpy(last + row * N, x, N * sizeof(scalar_t));
    }
  });
}

template <typename scalar_t>
void scan_bwd_kernel(const scalar_t* u, const scalar_t* delta, const scalar_t* A, const scalar_t* Bt,
                     const scalar_t* Ct, const scalar_t* dy, const scalar_t* dlast, scalar_t* du, scalar_t* ddelta,
                     scalar_t* dA_threads, scalar_t* dBt, scalar_t* dCt, int64_t batch, int64_t dim, int64_t L,
                     int64_t N, int64_t G) {
  const int64_t per_group = dim / G;
  // One batch element per task: dBt / dCt of that element sum over its channels without races.
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    scalar_t* dA_acc = dA_threads + at::get_thread_num() * dim * N;
    std::vector<scalar_t> xs_buf((L + 1) * N), decay_buf(L * N), g_buf(N);
    scalar_t* xs = xs_buf.data();        // xs[t * N + n] = state before position t (xs[0] = 0)
    scalar_t* decay = decay_buf.data();  // exp(delta_t * A[d, n])
    scalar_t* gr = g_buf.data();         // dL/dx carried backwards
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t row = b * dim + d, g = d / per_group;
        const scalar_t* u_r = u + row * L;
        const scalar_t* dl_r = delta + row * L;
        const scalar_t* dy_r = dy + row * L;
        const scalar_t* A_d = A + d * N;
        const scalar_t* B_r = Bt + (b * G + g) * L * N;
        const scalar_t* C_r = Ct + (b * G + g) * L * N;
        scalar_t* dB_r = dBt + (b * G + g) * L * N;
        scalar_t* dC_r = dCt + (b * G + g) * L * N;
        scalar_t* dA_d = dA_acc + d * N;
        scalar_t* du_r = du + row * L;
        scalar_t* ddl_r = ddelta + row * L;
        for (int64_t n = 0; n < N; ++n) xs[n] = 0;
        for (int64_t t = 0; t < L; ++t) {  // recompute the states
          const scalar_t dl = dl_r[t], dlu = dl * u_r[t];
          const scalar_t* B_t = B_r + t * N;
          const scalar_t* x_prev = xs + t * N;
          scalar_t* x_next = xs + (t + 1) * N;
          scalar_t* dec = decay + t * N;
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) {
            const scalar_t e = exp_impl<scalar_t>(dl * A_d[n]);
            dec[n] = e;
            x_next[n] = e * x_prev[n] + dlu * B_t[n];
          }
        }
        if (dlast != nullptr) {
          std::memcpy(gr, dlast + row * N, N * sizeof(scalar_t));
        } else {
          for (int64_t n = 0; n < N; ++n) gr[n] = 0;
        }
        for (int64_t t = L - 1; t >= 0; --t) {
          const scalar_t dl = dl_r[t], ut = u_r[t], dyt = dy_r[t], dlu = dl * ut;
          const scalar_t* B_t = B_r + t * N;
          const scalar_t* C_t = C_r + t * N;
          const scalar_t* x_prev = xs + t * N;
          const scalar_t* x_cur = xs + (t + 1) * N;
          const scalar_t* dec = decay + t * N;
          scalar_t* dB_t = dB_r + t * N;
          scalar_t* dC_t = dC_r + t * N;
          scalar_t sum_gB = 0, sum_da = 0;
#pragma omp simd reduction(+ : sum_gB, sum_da)
          for (int64_t n = 0; n < N; ++n) {
            const scalar_t gt = gr[n] + dyt * C_t[n];   // dL/dx_t
            const scalar_t da = gt * x_prev[n] * dec[n];  // dL/d(delta_t * A[d, n])
            dC_t[n] += dyt * x_cur[n];
            dB_t[n] += gt * dlu;
            dA_d[n] += da * dl;
            sum_gB += gt * B_t[n];
            sum_da += da * A_d[n];
            gr[n] = gt * dec[n];
          }
          ddl_r[t] = sum_da + sum_gB * ut;
          du_r[t] = sum_gB * dl;
        }
      }
    }
  });
}

void check_inputs(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                  const torch::Tensor& Bt, const torch::Tensor& Ct) {
  for (const auto* t : {&u, &delta, &A, &Bt, &Ct}) {
    TORCH_CHECK(t->device().is_cpu(), "selective scan CPU kernel: inputs must be on CPU");
    TORCH_CHECK(t->is_contiguous(), "selective scan CPU kernel: inputs must be contiguous");
    TORCH_CHECK(t->scalar_type() == u.scalar_type(), "selective scan CPU kernel: inputs must share one dtype");
  }
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "u, delta: (batch, dim, L)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "A: (dim, N)");
  TORCH_CHECK(Bt.dim() == 4 && Bt.size(0) == u.size(0) && Bt.size(2) == u.size(2) && Bt.size(3) == A.size(1),
              "Bt: (batch, G, L, N)");
  TORCH_CHECK(Ct.sizes() == Bt.sizes(), "Ct: (batch, G, L, N)");
  TORCH_CHECK(u.size(1) % Bt.size(1) == 0, "dim must be divisible by groups");
}

std::vector<torch::Tensor> scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                    torch::Tensor Ct) {
  check_inputs(u, delta, A, Bt, Ct);
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1), G = Bt.size(1);
  auto y = torch::empty_like(u);
  auto last = torch::empty({batch, dim, N}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    scan_fwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                              Bt.data_ptr<scalar_t>(), Ct.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                              last.data_ptr<scalar_t>(), batch, dim, L, N, G);
  });
  return {y, last};
}

std::vector<torch::Tensor> scan_bwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bt,
                                    torch::Tensor Ct, torch::Tensor dy, torch::Tensor dlast) {
  check_inputs(u, delta, A, Bt, Ct);
  TORCH_CHECK(dy.is_contiguous() && dy.sizes() == u.sizes() && dy.scalar_type() == u.scalar_type(), "dy");
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2), N = A.size(1), G = Bt.size(1);
  const bool has_dlast = dlast.numel() > 0;
  if (has_dlast) {
    TORCH_CHECK(dlast.is_contiguous() && dlast.numel() == batch * dim * N && dlast.scalar_type() == u.scalar_type(),
                "dlast: (batch, dim, N)");
  }
  auto du = torch::empty_like(u);
  auto ddelta = torch::empty_like(u);
  auto dA_threads = torch::zeros({at::get_num_threads(), dim, N}, u.options());
  auto dBt = torch::zeros_like(Bt);
  auto dCt = torch::zeros_like(Ct);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    scan_bwd_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                              Bt.data_ptr<scalar_t>(), Ct.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
                              has_dlast ? dlast.data_ptr<scalar_t>() : nullptr, du.data_ptr<scalar_t>(),
                              ddelta.data_ptr<scalar_t>(), dA_threads.data_ptr<scalar_t>(), dBt.data_ptr<scalar_t>(),
                              dCt.data_ptr<scalar_t>(), batch, dim, L, N, G);
  });
  return {du, ddelta, dA_threads.sum(0), dBt, dCt};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &scan_fwd, "selective scan core forward: (y, last_state)");
  m.def("bwd", &scan_bwd, "selective scan core backward: (du, ddelta, dA, dBt, dCt)");
}
