// oneDNN convolutions as XLA:CPU custom calls (JAX typed FFI), for segae_jax.native.onednn.
//
// One 2-D convolution geometry, NHWC activations and HWIO weights (flax's layouts, passed to
// oneDNN as they lie in XLA's buffers, so no activation is copied), float32 or bfloat16:
//   y[n, o, f] = sum over taps t and channels c of x[n, stride * o + t - pad_low, c] * w[t, c, f]
// and three handlers on it:
//   SegaeOnednnConvForward          (x, w)  -> y     convolution_forward
//   SegaeOnednnConvBackwardData     (dy, w) -> dx    convolution_backward_data
//   SegaeOnednnConvBackwardWeights  (x, dy) -> dw    convolution_backward_weights
// A transposed convolution is the backward-data pass of the convolution it transposes (the
// Python side flips the kernel), so these three cover every convolution of the models.
//
// Each geometry's primitive is made once and cached (a mutex-guarded map; creating one takes far
// longer than running a small one). Primitives run with a user scratchpad held per thread, so
// XLA may run several of them at once (pmap's devices, independent ops of one step).
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

enum Kind { kForward, kBackwardData, kBackwardWeights };

struct Geometry {
  Kind kind;
  dt type;
  dims src, wei, dst;  // oneDNN's logical order: {N, C, H, W} and {O, I, H, W}.
  dims strides, pad_low, pad_high;

  std::string Key() const {
    std::string key = std::to_string(kind) + ":" + std::to_string(static_cast<int>(type));
    for (const dims* d : {&src, &wei, &dst, &strides, &pad_low, &pad_high}) {
      key += "|";
      for (auto v : *d) key += std::to_string(v) + ",";
    }
    return key;
  }
};

// A primitive ready to run: which weights layout it wants and how to get there from HWIO.
struct Prepared {
  dnnl::primitive primitive;
  dnnl::memory::desc src, dst;           // NHWC, as XLA holds the activations.
  dnnl::memory::desc user_weights;       // HWIO, as XLA holds the kernel.
  dnnl::memory::desc primitive_weights;  // The layout oneDNN chose for this geometry.
  bool reorder = false;
  dnnl::reorder weights_reorder;         // HWIO -> primitive layout (or back, for gradients).
  size_t scratchpad_bytes = 0;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

std::unique_ptr<Prepared> Prepare(const Geometry& g) {
  auto& eng = Engine();
  auto p = std::make_unique<Prepared>();
  p->src = dnnl::memory::desc(g.src, g.type, tag::nhwc);
  p->dst = dnnl::memory::desc(g.dst, g.type, tag::nhwc);
  const auto& src = p->src;
  const auto& dst = p->dst;
  // Weights: oneDNN picks its blocked layout ('any') and the kernel is reordered into it on each
  // call (a small copy: the kernel, not the activations). SEGAE_ONEDNN_HWIO_WEIGHTS builds the
  // variant that makes the primitives read HWIO as it lies; benchmarks/onednn_variants.py times
  // both.
#ifdef SEGAE_ONEDNN_HWIO_WEIGHTS
  auto wei_any = dnnl::memory::desc(g.wei, g.type, tag::hwio);
#else
  auto wei_any = dnnl::memory::desc(g.wei, g.type, tag::any);
#endif
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  auto hint = dnnl::convolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wei_any,
      dst, g.strides, g.pad_low, g.pad_high, attr);
  p->user_weights = dnnl::memory::desc(g.wei, g.type, tag::hwio);
  dnnl::memory::desc scratch;
  if (g.kind == kForward) {
    p->primitive = dnnl::convolution_forward(hint);
    p->primitive_weights = hint.weights_desc();
    scratch = hint.scratchpad_desc();
  } else if (g.kind == kBackwardData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, g.strides, g.pad_low,
        g.pad_high, hint, attr);
    p->primitive = dnnl::convolution_backward_data(pd);
    p->primitive_weights = pd.weights_desc();
    scratch = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        eng, dnnl::algorithm::convolution_direct, src, wei_any, dst, g.strides, g.pad_low,
        g.pad_high, hint, attr);
    p->primitive = dnnl::convolution_backward_weights(pd);
    p->primitive_weights = pd.diff_weights_desc();
    scratch = pd.scratchpad_desc();
  }
  p->scratchpad_bytes = scratch.get_size();
  p->reorder = p->primitive_weights != p->user_weights;
  if (p->reorder) {
    p->weights_reorder = g.kind == kBackwardWeights
        ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, p->primitive_weights, eng,
                                                      p->user_weights))
        : dnnl::reorder(dnnl::reorder::primitive_desc(eng, p->user_weights, eng,
                                                      p->primitive_weights));
  }
  return p;
}

// SEGAE_ONEDNN_NO_CACHE builds the variant that creates every primitive afresh on each call
// (oneDNN's own primitive cache still helps it), for benchmarks/onednn_variants.py.
const Prepared& Cached(const Geometry& g) {
#ifdef SEGAE_ONEDNN_NO_CACHE
  thread_local std::unique_ptr<Prepared> fresh;
  fresh = Prepare(g);
  return *fresh;
#endif
  static std::mutex mutex;
  static auto* cache = new std::unordered_map<std::string, std::unique_ptr<Prepared>>();
  std::string key = g.Key();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache->find(key);
  if (it == cache->end()) it = cache->emplace(key, Prepare(g)).first;
  return *it->second;
}

// Per-thread buffers: the scratchpad and the reordered kernel, grown as needed, never shrunk.
void* Buffer(std::vector<char>& buffer, size_t bytes) {
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

ffi::Error Run(Kind kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
               int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  if (a.element_type() != b.element_type() || a.element_type() != out->element_type()) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: mixed dtypes");
  }
  dt type;
  if (a.element_type() == ffi::DataType::F32) {
    type = dt::f32;
  } else if (a.element_type() == ffi::DataType::BF16) {
    type = dt::bf16;
  } else {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                      "oneDNN convolution: expected float32 or bfloat16");
  }
  // Which buffer is which: x/dx [N, H, W, C], w/dw [KH, KW, C, F], y/dy [N, OH, OW, F].
  auto x = kind == kBackwardData ? out->dimensions() : a.dimensions();
  auto y = kind == kForward ? out->dimensions()
                      : kind == kBackwardData ? a.dimensions() : b.dimensions();
  auto w = kind == kBackwardWeights ? out->dimensions() : b.dimensions();
  if (x.size() != 4 || y.size() != 4 || w.size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: expected 4-D");
  }
  Geometry g{kind, type, {x[0], x[3], x[1], x[2]}, {w[3], w[2], w[0], w[1]},
             {y[0], y[3], y[1], y[2]}, {sh, sw}, {pt, pl}, {pb, pr}};
  thread_local std::vector<char> scratchpad, weights;
  // SEGAE_ONEDNN_SERIAL builds the variant that runs one call at a time (each already uses every
  // core) where XLA runs independent ones at once; benchmarks/onednn_variants.py times it.
#ifdef SEGAE_ONEDNN_SERIAL
  static std::mutex serial;
  std::lock_guard<std::mutex> one_at_a_time(serial);
#endif
  try {
    const Prepared& p = Cached(g);
    auto& eng = Engine();
    thread_local dnnl::stream stream(eng);
    void* wei_data = kind == kBackwardWeights ? out->untyped_data() : b.untyped_data();
    dnnl::memory user_wei(p.user_weights, eng, wei_data);
    dnnl::memory wei = p.reorder
        ? dnnl::memory(p.primitive_weights, eng, Buffer(weights, p.primitive_weights.get_size()))
        : user_wei;
    dnnl::memory scratch(dnnl::memory::desc({static_cast<int64_t>(p.scratchpad_bytes)}, dt::u8,
                                            tag::a),
                         eng, Buffer(scratchpad, p.scratchpad_bytes));
    if (kind == kForward) {
      if (p.reorder) p.weights_reorder.execute(stream, user_wei, wei);
      p.primitive.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(p.src, eng, a.untyped_data())},
                                   {DNNL_ARG_WEIGHTS, wei},
                                   {DNNL_ARG_DST, dnnl::memory(p.dst, eng, out->untyped_data())},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == kBackwardData) {
      if (p.reorder) p.weights_reorder.execute(stream, user_wei, wei);
      p.primitive.execute(
          stream, {{DNNL_ARG_DIFF_DST, dnnl::memory(p.dst, eng, a.untyped_data())},
                   {DNNL_ARG_WEIGHTS, wei},
                   {DNNL_ARG_DIFF_SRC, dnnl::memory(p.src, eng, out->untyped_data())},
                   {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      p.primitive.execute(stream, {{DNNL_ARG_SRC, dnnl::memory(p.src, eng, a.untyped_data())},
                                   {DNNL_ARG_DIFF_DST, dnnl::memory(p.dst, eng, b.untyped_data())},
                                   {DNNL_ARG_DIFF_WEIGHTS, wei},
                                   {DNNL_ARG_SCRATCHPAD, scratch}});
      if (p.reorder) p.weights_reorder.execute(stream, wei, user_wei);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution ") + g.Key() + ": " + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(kForward, x, w, y, sh, sw, pt, pb, pl, pr);
}

ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                        int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(kBackwardData, dy, w, dx, sh, sw, pt, pb, pl, pr);
}

ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                           int64_t pr) {
  return Run(kBackwardWeights, x, dy, dw, sh, sw, pt, pb, pl, pr);
}

}  // namespace

// Strides (sh, sw) and explicit padding (top, bottom, left, right) in pixels, as int64 attrs.
#define SEGAE_CONV_BINDING                                                               \
  ffi::Ffi::Bind()                                                                       \
      .Arg<ffi::AnyBuffer>()                                                             \
      .Arg<ffi::AnyBuffer>()                                                             \
      .Ret<ffi::AnyBuffer>()                                                             \
      .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")   \
      .Attr<int64_t>("pl").Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SegaeOnednnConvForward, Forward, SEGAE_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SegaeOnednnConvBackwardData, BackwardData, SEGAE_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SegaeOnednnConvBackwardWeights, BackwardWeights,
                              SEGAE_CONV_BINDING);

// The oneDNN version the library was built against, for the loader's check and messages.
extern "C" int SegaeOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}
