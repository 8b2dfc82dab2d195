// perfkern._C (and perfkern._C_emu: the same bindings over the emulated core): a thin pybind11 layer over the
// C API in perfkern/perfkern.h. Every launcher is bound the same way: Python passes the fields of its params
// struct as keyword arguments (pointers and streams are ints, 0 is NULL / the default stream; every field must
// be given), the launcher runs with the GIL released, and a failure raises RuntimeError with the status and the
// launcher's message.
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include <pybind11/pybind11.h>

#include "perfkern/perfkern.h"

namespace py = pybind11;

namespace {

void raise_on_error(const std::string& fn, perfkern_status_t status) {
  if (status != PERFKERN_SUCCESS) {
    throw std::runtime_error(fn + ": " + perfkern_status_string(status) + ": " + perfkern_last_error());
  }
}

template <typename F>
void assign(F& field, py::handle value) {
  if constexpr (std::is_pointer_v<F>) {
    field = reinterpret_cast<F>(static_cast<uintptr_t>(value.cast<uint64_t>()));
  } else if constexpr (std::is_enum_v<F>) {
    field = static_cast<F>(value.cast<int>());
  } else {
    field = value.cast<F>();
  }
}

// The fields of a params struct P, by name, so that keyword arguments fill it.
template <typename P>
class Fields {
 public:
  template <typename F>
  Fields& add(const char* name, F P::*member) {
    setters_[name] = [member](P& p, py::handle value) { assign(p.*member, value); };
    return *this;
  }

  // A field of a struct member (the moments of the dendrite launchers): keyword "<member>_<field>".
  template <typename S, typename F>
  Fields& add(const char* name, S P::*outer, F S::*inner) {
    setters_[name] = [outer, inner](P& p, py::handle value) { assign((p.*outer).*inner, value); };
    return *this;
  }

  P build(const std::string& fn, const py::kwargs& kwargs) const {
    P p{};
    size_t given = 0;
    for (const auto& item : kwargs) {
      const std::string key = py::str(item.first);
      const auto setter = setters_.find(key);
      if (setter == setters_.end()) {
        throw py::type_error(fn + "() got an unexpected argument '" + key + "'; its fields are " + names());
      }
      try {
        setter->second(p, item.second);
      } catch (const py::cast_error&) {
        throw py::type_error(fn + "(): " + key + " got a " + std::string(py::str(py::type::of(item.second))));
      }
      ++given;
    }
    if (given != setters_.size()) {
      std::string missing;
      for (const auto& [name, setter] : setters_) {
        if (!kwargs.contains(name)) {
          missing += (missing.empty() ? "" : ", ") + name;
        }
      }
      throw py::type_error(fn + "() is missing " + missing);
    }
    return p;
  }

  std::string names() const {
    std::string out;
    for (const auto& [name, setter] : setters_) {
      out += (out.empty() ? "" : ", ") + name;
    }
    return out;
  }

 private:
  std::map<std::string, std::function<void(P&, py::handle)>> setters_;
};

// name(stream, **fields) for a CUDA launcher.
template <typename P>
void def_launcher(py::module_& m, const char* name, perfkern_status_t (*launcher)(const P*, cudaStream_t),
                  const Fields<P>& fields, const char* doc) {
  const std::string fn = std::string("perfkern_") + name;
  m.def(
      name,
      [fn, launcher, fields](uintptr_t stream, const py::kwargs& kwargs) {
        const P p = fields.build(fn, kwargs);
        perfkern_status_t status;
        {
          py::gil_scoped_release release;
          status = launcher(&p, reinterpret_cast<cudaStream_t>(stream));
        }
        raise_on_error(fn, status);
      },
      py::arg("stream"), (std::string(doc) + " Fields: " + fields.names() + ".").c_str());
}

// name(**fields) for a CPU launcher (no stream): it runs on the calling thread and the core's pool.
template <typename P>
void def_launcher(py::module_& m, const char* name, perfkern_status_t (*launcher)(const P*), const Fields<P>& fields,
                  const char* doc) {
  const std::string fn = std::string("perfkern_") + name;
  m.def(
      name,
      [fn, launcher, fields](const py::kwargs& kwargs) {
        const P p = fields.build(fn, kwargs);
        perfkern_status_t status;
        {
          py::gil_scoped_release release;
          status = launcher(&p);
        }
        raise_on_error(fn, status);
      },
      (std::string(doc) + " Fields: " + fields.names() + ".").c_str());
}

// name(**fields) -> bytes for a workspace query taking the launcher's params.
template <typename P>
void def_workspace_size(py::module_& m, const char* name, perfkern_status_t (*query)(const P*, int64_t*),
                        const Fields<P>& fields, const char* doc) {
  const std::string fn = std::string("perfkern_") + name;
  m.def(
      name,
      [fn, query, fields](const py::kwargs& kwargs) {
        const P p = fields.build(fn, kwargs);
        int64_t bytes = 0;
        raise_on_error(fn, query(&p, &bytes));
        return bytes;
      },
      (std::string(doc) + " Fields: " + fields.names() + ".").c_str());
}

int device_count() {
  int count = 0;
  if (perfkern_device_count(&count) != PERFKERN_SUCCESS) {
    return 0;
  }
  return count;
}

py::dict device_info(int device) {
  perfkern_device_info_t info{};
  raise_on_error("perfkern_device_info", perfkern_device_info(device, &info));
  py::dict d;
  d["name"] = std::string(info.name);
  d["major"] = info.major;
  d["minor"] = info.minor;
  d["multiprocessor_count"] = info.multiprocessor_count;
  d["total_global_mem"] = info.total_global_mem;
  return d;
}

int64_t sparse24_mma_meta_size(int64_t rows, int64_t meta_cols) {
  if (rows < 0 || meta_cols < 0 || meta_cols % 2 != 0) {
    throw std::invalid_argument("sparse24_mma_meta_size: expected rows >= 0 and an even meta_cols >= 0, got rows=" +
                                std::to_string(rows) + ", meta_cols=" + std::to_string(meta_cols));
  }
  return perfkern_sparse24_mma_meta_size(rows, meta_cols);
}

// Names a field of the params struct P in scope once: its Python keyword is its C name.
#define PERFKERN_FIELD(name) .add(#name, &P::name)

void def_sparse24(py::module_& m) {
  {
    using P = perfkern_sparse24_compress_params_t;
    def_launcher(m, "sparse24_compress", perfkern_sparse24_compress,
                 Fields<P>() PERFKERN_FIELD(src) PERFKERN_FIELD(values) PERFKERN_FIELD(meta) PERFKERN_FIELD(mask)
                             PERFKERN_FIELD(rows) PERFKERN_FIELD(cols) PERFKERN_FIELD(src_row_stride)
                             PERFKERN_FIELD(values_row_stride) PERFKERN_FIELD(meta_row_stride)
                             PERFKERN_FIELD(mask_row_stride) PERFKERN_FIELD(dtype) PERFKERN_FIELD(device),
                 "2:4-compress src into values / meta / mask (each may be 0: not written).");
  }
  {
    using P = perfkern_sparse24_decompress_params_t;
    def_launcher(m, "sparse24_decompress", perfkern_sparse24_decompress,
                 Fields<P>() PERFKERN_FIELD(values) PERFKERN_FIELD(meta) PERFKERN_FIELD(dense) PERFKERN_FIELD(rows)
                             PERFKERN_FIELD(cols) PERFKERN_FIELD(values_row_stride) PERFKERN_FIELD(meta_row_stride)
                             PERFKERN_FIELD(dense_row_stride) PERFKERN_FIELD(dtype) PERFKERN_FIELD(device),
                 "Expand values / meta into dense.");
  }
  {
    using P = perfkern_sparse24_gather_params_t;
    def_launcher(m, "sparse24_gather", perfkern_sparse24_gather,
                 Fields<P>() PERFKERN_FIELD(dense) PERFKERN_FIELD(meta) PERFKERN_FIELD(values) PERFKERN_FIELD(rows)
                             PERFKERN_FIELD(cols) PERFKERN_FIELD(dense_row_stride) PERFKERN_FIELD(meta_row_stride)
                             PERFKERN_FIELD(values_row_stride) PERFKERN_FIELD(dtype) PERFKERN_FIELD(device),
                 "values = the entries of dense that meta names.");
  }
  {
    using P = perfkern_sparse24_meta_reorder_params_t;
    def_launcher(m, "sparse24_meta_reorder", perfkern_sparse24_meta_reorder,
                 Fields<P>() PERFKERN_FIELD(src) PERFKERN_FIELD(dst) PERFKERN_FIELD(rows) PERFKERN_FIELD(meta_cols)
                             PERFKERN_FIELD(to_cutlass) PERFKERN_FIELD(device),
                 "Canonical int16 metadata <-> torch's semi-structured CUTLASS layout.");
  }
  {
    using P = perfkern_sparse24_meta_to_mma_params_t;
    def_launcher(m, "sparse24_meta_to_mma", perfkern_sparse24_meta_to_mma,
                 Fields<P>() PERFKERN_FIELD(src) PERFKERN_FIELD(dst) PERFKERN_FIELD(rows) PERFKERN_FIELD(meta_cols)
                             PERFKERN_FIELD(device),
                 "Canonical int16 metadata [rows, meta_cols] -> the layout sparse24_mm reads (dst: "
                 "sparse24_mma_meta_size int16, 16-byte aligned).");
  }
  {
    using P = perfkern_sparse24_mm_params_t;
    def_launcher(m, "sparse24_mm", perfkern_sparse24_mm,
                 Fields<P>() PERFKERN_FIELD(x) PERFKERN_FIELD(values) PERFKERN_FIELD(meta_mma) PERFKERN_FIELD(bias)
                             PERFKERN_FIELD(lora_t) PERFKERN_FIELD(lora_b) PERFKERN_FIELD(out) PERFKERN_FIELD(m)
                             PERFKERN_FIELD(n) PERFKERN_FIELD(k) PERFKERN_FIELD(r) PERFKERN_FIELD(scale)
                             PERFKERN_FIELD(x_row_stride) PERFKERN_FIELD(values_row_stride) PERFKERN_FIELD(bias_stride)
                             PERFKERN_FIELD(t_stride0) PERFKERN_FIELD(t_stride1) PERFKERN_FIELD(b_stride0)
                             PERFKERN_FIELD(b_stride1) PERFKERN_FIELD(out_row_stride)
                             PERFKERN_FIELD(dtype) PERFKERN_FIELD(device) PERFKERN_FIELD(kernel),
                 "out = x . Ws^T + bias + scale * lora_t . lora_b^T on sparse tensor cores (bias, lora_t, lora_b "
                 "may be 0); kernel: 0 auto, 1 mma.sp, 2 wgmma.sp.");
  }
  {
    using P = perfkern_sparse24_mm_cpu_params_t;
    def_launcher(m, "sparse24_mm_cpu", perfkern_sparse24_mm_cpu,
                 Fields<P>() PERFKERN_FIELD(x) PERFKERN_FIELD(values) PERFKERN_FIELD(meta) PERFKERN_FIELD(bias)
                             PERFKERN_FIELD(lora_t) PERFKERN_FIELD(lora_b) PERFKERN_FIELD(out) PERFKERN_FIELD(m)
                             PERFKERN_FIELD(n) PERFKERN_FIELD(k) PERFKERN_FIELD(r) PERFKERN_FIELD(scale)
                             PERFKERN_FIELD(x_row_stride) PERFKERN_FIELD(values_row_stride)
                             PERFKERN_FIELD(meta_row_stride) PERFKERN_FIELD(bias_stride) PERFKERN_FIELD(t_stride0)
                             PERFKERN_FIELD(t_stride1) PERFKERN_FIELD(b_stride0) PERFKERN_FIELD(b_stride1)
                             PERFKERN_FIELD(out_row_stride) PERFKERN_FIELD(dtype) PERFKERN_FIELD(num_threads)
                             PERFKERN_FIELD(isa),
                 "out = x . Ws^T + bias + scale * lora_t . lora_b^T on the CPU (canonical 2:4 weight; bias, lora_t, "
                 "lora_b may be 0); isa: 0 auto, 1 scalar, 2 avx2, 3 avx512, 4 avx512_bf16.");
  }
  {
    using P = perfkern_dense_mm_cpu_params_t;
    def_launcher(m, "dense_mm_cpu", perfkern_dense_mm_cpu,
                 Fields<P>() PERFKERN_FIELD(x) PERFKERN_FIELD(w) PERFKERN_FIELD(bias) PERFKERN_FIELD(lora_t)
                             PERFKERN_FIELD(lora_b) PERFKERN_FIELD(out) PERFKERN_FIELD(m) PERFKERN_FIELD(n)
                             PERFKERN_FIELD(k) PERFKERN_FIELD(r) PERFKERN_FIELD(scale) PERFKERN_FIELD(x_row_stride)
                             PERFKERN_FIELD(w_row_stride) PERFKERN_FIELD(bias_stride) PERFKERN_FIELD(t_stride0)
                             PERFKERN_FIELD(t_stride1) PERFKERN_FIELD(b_stride0) PERFKERN_FIELD(b_stride1)
                             PERFKERN_FIELD(out_row_stride) PERFKERN_FIELD(dtype) PERFKERN_FIELD(num_threads)
                             PERFKERN_FIELD(isa),
                 "The same product with a dense weight w [n, k], from the same kernels (the baseline of the sparse "
                 "one).");
  }
  {
    using P = perfkern_sparse24_weight_grad_params_t;
    def_launcher(m, "sparse24_weight_grad", perfkern_sparse24_weight_grad,
                 Fields<P>() PERFKERN_FIELD(dy) PERFKERN_FIELD(x) PERFKERN_FIELD(meta) PERFKERN_FIELD(out)
                             PERFKERN_FIELD(m) PERFKERN_FIELD(n) PERFKERN_FIELD(k) PERFKERN_FIELD(dy_row_stride)
                             PERFKERN_FIELD(x_row_stride) PERFKERN_FIELD(meta_row_stride)
                             PERFKERN_FIELD(out_row_stride) PERFKERN_FIELD(accumulate) PERFKERN_FIELD(dtype)
                             PERFKERN_FIELD(out_dtype) PERFKERN_FIELD(device),
                 "out (+)= the entries of dy^T . x that meta keeps, in the compressed [n, k/2] layout.");
  }
  {
    using P = perfkern_sparse24_transpose_prune_params_t;
    def_launcher(m, "sparse24_transpose_prune", perfkern_sparse24_transpose_prune,
                 Fields<P>() PERFKERN_FIELD(values) PERFKERN_FIELD(meta) PERFKERN_FIELD(bwd_values)
                             PERFKERN_FIELD(bwd_meta) PERFKERN_FIELD(n) PERFKERN_FIELD(k)
                             PERFKERN_FIELD(values_row_stride) PERFKERN_FIELD(meta_row_stride)
                             PERFKERN_FIELD(bwd_values_row_stride) PERFKERN_FIELD(bwd_meta_row_stride)
                             PERFKERN_FIELD(choose_mask) PERFKERN_FIELD(dtype) PERFKERN_FIELD(device),
                 "The double-pruned backward copy: Ws^T pruned 2:4 along n (choose_mask=1) or gathered onto "
                 "bwd_meta (0), compressed.");
  }
  m.def("sparse24_mma_meta_size", &sparse24_mma_meta_size, py::arg("rows"), py::arg("meta_cols"),
        "int16 elements of the mma-layout metadata: ceil(rows / 32) * 32 * meta_cols.");
}

// The five statistics and the count of a perfkern_dendrite_moments_t member `s`: keywords s_v_mean, ... s_count.
#define PERFKERN_MOMENTS(s)                                                                             \
  .add(#s "_v_mean", &P::s, &perfkern_dendrite_moments_t::v_mean)                                       \
      .add(#s "_cov", &P::s, &perfkern_dendrite_moments_t::cov)                                         \
      .add(#s "_v_var", &P::s, &perfkern_dendrite_moments_t::v_var)                                     \
      .add(#s "_e_mean", &P::s, &perfkern_dendrite_moments_t::e_mean)                                   \
      .add(#s "_e_var", &P::s, &perfkern_dendrite_moments_t::e_var)                                     \
      .add(#s "_count", &P::s, &perfkern_dendrite_moments_t::count)

void def_pera(py::module_& m) {
  m.def(
      "pera_expanded_rank",
      [](int64_t r, int mode) { return perfkern_pera_expanded_rank(r, static_cast<perfkern_pera_mode_t>(mode)); },
      py::arg("r"), py::arg("mode"), "r + |P| for rank r in mode (0 full, 1 square, 2 cross).");
  {
    using P = perfkern_pera_forward_params_t;
    def_launcher(m, "pera_forward", perfkern_pera_forward,
                 Fields<P>() PERFKERN_FIELD(x) PERFKERN_FIELD(lora_a) PERFKERN_FIELD(lora_b) PERFKERN_FIELD(h)
                             PERFKERN_FIELD(out) PERFKERN_FIELD(z) PERFKERN_FIELD(m) PERFKERN_FIELD(n)
                             PERFKERN_FIELD(k) PERFKERN_FIELD(r) PERFKERN_FIELD(scale) PERFKERN_FIELD(accumulate)
                             PERFKERN_FIELD(x_row_stride) PERFKERN_FIELD(a_row_stride) PERFKERN_FIELD(b_row_stride)
                             PERFKERN_FIELD(out_row_stride) PERFKERN_FIELD(z_row_stride) PERFKERN_FIELD(mode)
                             PERFKERN_FIELD(dtype) PERFKERN_FIELD(device),
                 "out (+)= scale . (x . A^T) . B^T with A^, B^ generated on chip; z = x . A^T (fp32).");
  }
  {
    using P = perfkern_pera_delta_weight_params_t;
    def_launcher(m, "pera_delta_weight", perfkern_pera_delta_weight,
                 Fields<P>() PERFKERN_FIELD(lora_a) PERFKERN_FIELD(lora_b) PERFKERN_FIELD(h) PERFKERN_FIELD(out)
                             PERFKERN_FIELD(n) PERFKERN_FIELD(k) PERFKERN_FIELD(r) PERFKERN_FIELD(scale)
                             PERFKERN_FIELD(a_row_stride) PERFKERN_FIELD(b_row_stride) PERFKERN_FIELD(out_row_stride)
                             PERFKERN_FIELD(mode) PERFKERN_FIELD(dtype) PERFKERN_FIELD(device),
                 "out = scale . B^ . A^, the merged weight [n, k].");
  }
  {
    using P = perfkern_pera_backward_params_t;
    const auto fields =
        Fields<P>() PERFKERN_FIELD(grad) PERFKERN_FIELD(x) PERFKERN_FIELD(lora_a) PERFKERN_FIELD(lora_b)
            PERFKERN_FIELD(h) PERFKERN_FIELD(z) PERFKERN_FIELD(dx) PERFKERN_FIELD(d_a) PERFKERN_FIELD(d_b)
                PERFKERN_FIELD(d_h) PERFKERN_FIELD(accumulate) PERFKERN_FIELD(workspace) PERFKERN_FIELD(workspace_bytes) PERFKERN_FIELD(m)
                    PERFKERN_FIELD(n) PERFKERN_FIELD(k) PERFKERN_FIELD(r) PERFKERN_FIELD(scale)
                        PERFKERN_FIELD(grad_row_stride) PERFKERN_FIELD(x_row_stride) PERFKERN_FIELD(a_row_stride)
                            PERFKERN_FIELD(b_row_stride) PERFKERN_FIELD(z_row_stride) PERFKERN_FIELD(dx_row_stride)
                                PERFKERN_FIELD(d_a_row_stride) PERFKERN_FIELD(d_b_row_stride) PERFKERN_FIELD(mode)
                                    PERFKERN_FIELD(dtype) PERFKERN_FIELD(device);
    def_launcher(m, "pera_backward", perfkern_pera_backward, fields,
                 "dx, dA, dB, dh of the PERA term (each may be 0: not computed).");
    def_workspace_size(m, "pera_backward_workspace_size", perfkern_pera_backward_workspace_size, fields,
                       "Bytes of workspace pera_backward needs for these fields.");
  }
}

void def_dendrite(py::module_& m) {
  {
    using P = perfkern_dendrite_correlation_params_t;
    const auto fields = Fields<P>() PERFKERN_FIELD(values) PERFKERN_FIELD(errors) PERFKERN_MOMENTS(stats)
        PERFKERN_FIELD(score) PERFKERN_FIELD(workspace) PERFKERN_FIELD(workspace_bytes) PERFKERN_FIELD(layers)
            PERFKERN_FIELD(p) PERFKERN_FIELD(c) PERFKERN_FIELD(n) PERFKERN_FIELD(values_stride_l)
                PERFKERN_FIELD(values_stride_p) PERFKERN_FIELD(values_stride_c) PERFKERN_FIELD(errors_stride_l)
                    PERFKERN_FIELD(errors_stride_p) PERFKERN_FIELD(mode) PERFKERN_FIELD(dtype) PERFKERN_FIELD(device);
    def_launcher(m, "dendrite_correlation", perfkern_dendrite_correlation, fields,
                 "Statistics (stats_*) and score of values [L, P, C, N] against errors [L, P, N].");
    def_workspace_size(m, "dendrite_correlation_workspace_size", perfkern_dendrite_correlation_workspace_size, fields,
                       "Bytes of workspace dendrite_correlation uses to split the tokens (0: no split).");
  }
  {
    using P = perfkern_dendrite_grad_params_t;
    def_launcher(m, "dendrite_grad", perfkern_dendrite_grad,
                 Fields<P>() PERFKERN_FIELD(values) PERFKERN_FIELD(errors) PERFKERN_MOMENTS(batch)
                     PERFKERN_FIELD(alpha) PERFKERN_FIELD(beta) PERFKERN_FIELD(upstream) PERFKERN_FIELD(out)
                         PERFKERN_FIELD(layers) PERFKERN_FIELD(p) PERFKERN_FIELD(c) PERFKERN_FIELD(n)
                             PERFKERN_FIELD(values_stride_l) PERFKERN_FIELD(values_stride_p)
                                 PERFKERN_FIELD(values_stride_c) PERFKERN_FIELD(errors_stride_l)
                                     PERFKERN_FIELD(errors_stride_p) PERFKERN_FIELD(out_stride_l)
                                         PERFKERN_FIELD(out_stride_p) PERFKERN_FIELD(out_stride_c)
                                             PERFKERN_FIELD(source) PERFKERN_FIELD(mode) PERFKERN_FIELD(dtype)
                                                 PERFKERN_FIELD(device),
                 "out = alpha (E - e_mean) + beta (V - v_mean); source 0 coefficients, 1 upstream, 2 cascade.");
  }
  {
    using P = perfkern_dendrite_state_update_params_t;
    def_launcher(m, "dendrite_state_update", perfkern_dendrite_state_update,
                 Fields<P>() PERFKERN_MOMENTS(batch) PERFKERN_MOMENTS(running) PERFKERN_MOMENTS(epoch)
                     PERFKERN_FIELD(running_score) PERFKERN_FIELD(batch_number) PERFKERN_FIELD(window)
                         PERFKERN_FIELD(beta) PERFKERN_FIELD(layers) PERFKERN_FIELD(c) PERFKERN_FIELD(n)
                             PERFKERN_FIELD(mode) PERFKERN_FIELD(device),
                 "Fold batch_* into running_* (and epoch_*) in place, as CorrelationState.fold.");
  }
}

#undef PERFKERN_MOMENTS
#undef PERFKERN_FIELD

}  // namespace

// The module's name: _C, or _C_emu for the emulated core (CMake defines it).
#ifndef PERFKERN_PYTHON_MODULE
#define PERFKERN_PYTHON_MODULE _C
#endif

PYBIND11_MODULE(PERFKERN_PYTHON_MODULE, m) {
  m.doc() = "perfkern core (C API bindings; pointers and streams are ints, 0 = NULL)";

  m.def("version", []() { return std::string(perfkern_version()); }, "Version of the native core.");
  m.def("cuda_archs", []() { return std::string(perfkern_cuda_archs()); },
        "CUDA architectures compiled in, e.g. '80;90a' ('' without CUDA).");
  m.def("build_flavor", []() { return std::string(perfkern_build_flavor()); },
        "'cuda', 'emulated' or 'cpu': which build of the core this is.");
  m.def("device_count", &device_count, "Number of usable CUDA devices (0 when none; never raises).");
  m.def("device_info", &device_info, py::arg("device"),
        "dict(name, major, minor, multiprocessor_count, total_global_mem) of a device.");
  m.def("cpu_isa", []() { return std::string(perfkern_cpu_isa_name(perfkern_cpu_isa())); },
        "The best instruction set of this CPU the CPU kernels run: 'avx512_bf16', 'avx512', 'avx2' or 'scalar'.");
  m.def("cpu_threading", []() { return std::string(perfkern_cpu_threading()); },
        "'openmp' or 'pool': what runs the CPU kernels' threads (see perfkern_cpu_threading).");
  m.def("cpu_forked_child", &perfkern_cpu_forked_child,
        "Declare this process a forked child: the CPU kernels run on the library's own pool from now on.");
  m.def(
      "cpu_isa_supported",
      [](int isa) { return perfkern_cpu_isa_supported(static_cast<perfkern_cpu_isa_t>(isa)) != 0; }, py::arg("isa"),
      "Whether the CPU kernels can run isa (0 auto, 1 scalar, 2 avx2, 3 avx512, 4 avx512_bf16) here.");
  def_sparse24(m);
  def_pera(m);
  def_dendrite(m);
}
