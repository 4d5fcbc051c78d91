// The decoding step's layer loop of slm.generate.FusedStep in C++, for int8 weight-only matrices on CPU (with their
// bf16 copies for passes of more than max_rows rows, where the layers have them).
//
// Why: at a few rows per step the Python loop spends ~40% of a SmolLM2-135M step on ~30 small torch calls
// per layer (norms, rotary, casts, K/V writes), each a Python call plus an op dispatch. Here the four int8
// matmuls and the attention stay torch's own kernels (at::_weight_int8pack_mm, at::scaled_dot_product_attention,
// called as the Python loop calls them), and everything between them is plain loops over the few rows.
//
// The arithmetic mirrors FusedStep.layers_forward operation by operation (fp32 residual stream; the matrices'
// inputs rounded to bf16, their bf16 outputs widened exactly; rotary as q*cos + rotate_half(q)*sin), so the
// hidden states agree with it to float rounding (the norm's and silu's own rounding; tests compare).
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace {

using at::Tensor;
using bf16 = c10::BFloat16;

// y = x * rsqrt(mean(x^2) + eps) * w per row of the residual stream [rows, D], rounded to bf16 into out (the
// int8 kernel's input). The sum of squares runs in double: torch's rms_norm (the Python loop's) sums in float
// in an order that depends on the CPU's vector width, so the two agree to float rounding, not bit for bit;
// calling torch's own from here cost more than the rest of this loop together (~1.5 ms a SmolLM2 step).
void rms_norm_bf16(const float* x, const float* w, bf16* out, int64_t rows, int64_t D, double eps) {
  for (int64_t r = 0; r < rows; ++r, x += D, out += D) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(x[d]) * x[d];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
    for (int64_t d = 0; d < D; ++d) out[d] = bf16((x[d] * inv) * w[d]);
  }
}

Tensor fused_layers(const Tensor& x_in, at::TensorList n1, at::TensorList qkv_w, at::TensorList qkv_s,
                    at::TensorList o_w, at::TensorList o_s, at::TensorList n2, at::TensorList gu_w,
                    at::TensorList gu_s, at::TensorList dn_w, at::TensorList dn_s, at::TensorList qkv_b,
                    at::TensorList o_b, at::TensorList gu_b, at::TensorList dn_b, const Tensor& K, const Tensor& V,
                    const Tensor& pos, const Tensor& cos_tab, const Tensor& sin_tab,
                    const std::optional<Tensor>& mask, int64_t span, int64_t nh, int64_t nkv, double eps_d,
                    int64_t max_rows) {
  // x_in [B, n, D] fp32; K/V [L, B, nkv, max_len, hd] fp32; pos [B, n] int64 (where each new token goes);
  // cos_tab/sin_tab [max_len, hd] fp32 (the plain rotary tables); mask: SDPA's boolean mask [B|1, 1, n, span]
  // or none (one token per row, attending to every position below span).
  TORCH_CHECK(x_in.dim() == 3 && x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(),
              "fused_layers: x must be a float32 CPU tensor [B, n, D]");
  const int64_t B = x_in.size(0), n = x_in.size(1), D = x_in.size(2), rows = B * n, L = n1.size();
  TORCH_CHECK(K.dim() == 5 && K.size(0) == L && K.size(1) == B && K.size(2) == nkv && K.is_contiguous() &&
                  V.sizes() == K.sizes() && V.is_contiguous() && K.scalar_type() == at::kFloat &&
                  V.scalar_type() == at::kFloat,
              "fused_layers: K/V must be contiguous float32 [layers, B, nkv, max_len, hd]");
  const int64_t max_len = K.size(3), hd = K.size(4), half = hd / 2, qw = (nh + 2 * nkv) * hd;
  TORCH_CHECK(nh * hd == D && nh % nkv == 0 && hd % 2 == 0, "fused_layers: head sizes do not fit D");
  TORCH_CHECK(pos.sizes() == at::IntArrayRef({B, n}) && pos.scalar_type() == at::kLong,
              "fused_layers: pos must be int64 [B, n]");
  TORCH_CHECK(cos_tab.dim() == 2 && cos_tab.size(0) == max_len && cos_tab.size(1) == hd &&
                  sin_tab.sizes() == cos_tab.sizes() && cos_tab.is_contiguous() && sin_tab.is_contiguous() &&
                  cos_tab.scalar_type() == at::kFloat && sin_tab.scalar_type() == at::kFloat,
              "fused_layers: rotary tables must be contiguous float32 [max_len, hd]");
  TORCH_CHECK(span >= 1 && span <= max_len, "fused_layers: span out of range");
  for (auto* lst : {&qkv_w, &qkv_s, &o_w, &o_s, &n2, &gu_w, &gu_s, &dn_w, &dn_s})
    TORCH_CHECK(static_cast<int64_t>(lst->size()) == L, "fused_layers: every per-layer list needs one entry a layer");
  // more rows than max_rows: the matrices' bf16 copies (as Int8Linear does above its max_rows)
  const bool bulk = rows > max_rows;
  if (bulk)
    for (auto* lst : {&qkv_b, &o_b, &gu_b, &dn_b})
      TORCH_CHECK(static_cast<int64_t>(lst->size()) == L,
                  "fused_layers: more rows than max_rows need the matrices' bf16 copies");
  auto matmul = [bulk](const Tensor& in, at::TensorList w, at::TensorList s, at::TensorList b, int64_t i) {
    return (bulk ? at::linear(in, b[i]) : at::_weight_int8pack_mm(in, w[i], s[i])).contiguous();
  };
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i) TORCH_CHECK(p[i] >= 0 && p[i] < max_len, "fused_layers: position out of range");

  Tensor x = x_in.contiguous().clone();  // the residual stream [B, n, D]
  float* xs = x.data_ptr<float>();
  auto bopt = at::TensorOptions().dtype(at::kBFloat16);
  auto fopt = at::TensorOptions().dtype(at::kFloat);
  Tensor h = at::empty({rows, D}, bopt);  // a matrix's bf16 input
  Tensor q = at::empty({B, nh, n, hd}, fopt);
  Tensor att_in = at::empty({rows, D}, bopt);
  Tensor g32, act;  // silu's fp32 input and down's bf16 input [rows, I], sized at the first layer
  const float* ct = cos_tab.data_ptr<float>();
  const float* st = sin_tab.data_ptr<float>();
  const int64_t kv_b = nkv * max_len * hd, kv_l = B * kv_b;  // strides of K/V over rows and layers
  float rot[1024];
  TORCH_CHECK(hd <= 1024, "fused_layers: head_dim over 1024");

  for (int64_t i = 0; i < L; ++i) {
    bf16* hp = h.data_ptr<bf16>();
    rms_norm_bf16(xs, n1[i].data_ptr<float>(), hp, rows, D, eps_d);
    Tensor y = matmul(h, qkv_w, qkv_s, qkv_b, i);  // [rows, (nh + 2 nkv) hd] bf16
    const bf16* yp = y.data_ptr<bf16>();
    float* qp = q.data_ptr<float>();
    float* kl = K.data_ptr<float>() + i * kv_l;
    float* vl = V.data_ptr<float>() + i * kv_l;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < n; ++t) {
        const int64_t at_pos = p[b * n + t];
        const float* c = ct + at_pos * hd;
        const float* s = st + at_pos * hd;
        const bf16* yr = yp + (b * n + t) * qw;
        for (int64_t head = 0; head < nh + nkv; ++head) {  // q heads, then k heads: rotary
          const bf16* src = yr + head * hd;
          for (int64_t j = 0; j < hd; ++j) {
            const float a = static_cast<float>(src[j]) * c[j];
            const float o = j < half ? static_cast<float>(src[j + half]) * (-s[j])
                                     : static_cast<float>(src[j - half]) * s[j];
            rot[j] = a + o;
          }
          float* dst = head < nh ? qp + ((b * nh + head) * n + t) * hd
                                 : kl + b * kv_b + ((head - nh) * max_len + at_pos) * hd;
          for (int64_t j = 0; j < hd; ++j) dst[j] = rot[j];
        }
        for (int64_t head = 0; head < nkv; ++head) {  // v heads: widened as they are
          const bf16* src = yr + (nh + nkv + head) * hd;
          float* dst = vl + b * kv_b + (head * max_len + at_pos) * hd;
          for (int64_t j = 0; j < hd; ++j) dst[j] = static_cast<float>(src[j]);
        }
      }
    }
    Tensor Ki = K.select(0, i).narrow(2, 0, span), Vi = V.select(0, i).narrow(2, 0, span);
    Tensor att = at::scaled_dot_product_attention(q, Ki, Vi, mask, 0.0, false, std::nullopt, nh != nkv);
    const float* ap = att.data_ptr<float>();  // [B, nh, n, hd] -> [rows, nh * hd] bf16
    TORCH_CHECK(att.is_contiguous(), "fused_layers: attention output not contiguous");
    bf16* aip = att_in.data_ptr<bf16>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t head = 0; head < nh; ++head)
        for (int64_t t = 0; t < n; ++t) {
          const float* src = ap + ((b * nh + head) * n + t) * hd;
          bf16* dst = aip + (b * n + t) * D + head * hd;
          for (int64_t j = 0; j < hd; ++j) dst[j] = bf16(src[j]);
        }
    Tensor o = matmul(att_in, o_w, o_s, o_b, i);
    const bf16* op = o.data_ptr<bf16>();
    for (int64_t e = 0; e < rows * D; ++e) xs[e] = xs[e] + static_cast<float>(op[e]);

    rms_norm_bf16(xs, n2[i].data_ptr<float>(), hp, rows, D, eps_d);
    Tensor gu = matmul(h, gu_w, gu_s, gu_b, i);  // [rows, 2 I] bf16
    const int64_t I = gu.size(1) / 2;
    // silu through torch's own vectorized kernel (its exp rounds differently from std::exp), on the gate half
    // widened to fp32 as the Python loop does; then times the up half, rounded to bf16 for the down matrix
    if (!g32.defined()) {
      g32 = at::empty({rows, I}, fopt);
      act = at::empty({rows, I}, bopt);
    }
    TORCH_CHECK(g32.size(1) == I, "fused_layers: every layer needs the same intermediate size");
    const bf16* gp = gu.data_ptr<bf16>();
    float* g32p = g32.data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < I; ++j) g32p[r * I + j] = static_cast<float>(gp[r * 2 * I + j]);
    at::silu_(g32);
    bf16* actp = act.data_ptr<bf16>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < I; ++j)
        actp[r * I + j] = bf16(g32p[r * I + j] * static_cast<float>(gp[r * 2 * I + I + j]));
    Tensor dn = matmul(act, dn_w, dn_s, dn_b, i);
    const bf16* dp = dn.data_ptr<bf16>();
    for (int64_t e = 0; e < rows * D; ++e) xs[e] = xs[e] + static_cast<float>(dp[e]);
  }
  return x;
}

}  // namespace

TORCH_LIBRARY(slm_native, m) {
  m.def("fused_layers(Tensor x, Tensor[] n1, Tensor[] qkv_w, Tensor[] qkv_s, Tensor[] o_w, Tensor[] o_s, "
        "Tensor[] n2, Tensor[] gu_w, Tensor[] gu_s, Tensor[] dn_w, Tensor[] dn_s, Tensor[] qkv_b, Tensor[] o_b, "
        "Tensor[] gu_b, Tensor[] dn_b, Tensor K, Tensor V, Tensor pos, Tensor cos, Tensor sin, Tensor? mask, "
        "int span, int nh, int nkv, float eps, int max_rows) -> Tensor");
  m.impl("fused_layers", c10::DispatchKey::CPU, TORCH_FN(fused_layers));
}
