// perfkern._C: a thin pybind11 layer over the C API in perfkern/perfkern.h. Device pointers and
// streams are Python ints (0 is NULL / the default stream); failures raise RuntimeError.
#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/pybind11.h>

#include "perfkern/perfkern.h"

namespace py = pybind11;

namespace {

void raise_on_error(const char* fn, perfkern_status_t status) {
  if (status != PERFKERN_SUCCESS) {
    throw std::runtime_error(std::string(fn) + ": " + perfkern_status_string(status) + ": " + perfkern_last_error());
  }
}

template <typename T>
T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

perfkern_dtype_t as_dtype(int dtype) { return static_cast<perfkern_dtype_t>(dtype); }

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

void sparse24_compress(uintptr_t src, uintptr_t values, uintptr_t meta, uintptr_t mask, int64_t rows, int64_t cols,
                       int64_t src_row_stride, int64_t values_row_stride, int64_t meta_row_stride,
                       int64_t mask_row_stride, int dtype, int device, uintptr_t stream) {
  perfkern_sparse24_compress_params_t p{};
  p.src = as_ptr<const void>(src);
  p.values = as_ptr<void>(values);
  p.meta = as_ptr<int16_t>(meta);
  p.mask = as_ptr<uint8_t>(mask);
  p.rows = rows;
  p.cols = cols;
  p.src_row_stride = src_row_stride;
  p.values_row_stride = values_row_stride;
  p.meta_row_stride = meta_row_stride;
  p.mask_row_stride = mask_row_stride;
  p.dtype = as_dtype(dtype);
  p.device = device;
  perfkern_status_t status;
  {
    py::gil_scoped_release release;
    status = perfkern_sparse24_compress(&p, as_stream(stream));
  }
  raise_on_error("perfkern_sparse24_compress", status);
}

void sparse24_decompress(uintptr_t values, uintptr_t meta, uintptr_t dense, int64_t rows, int64_t cols,
                         int64_t values_row_stride, int64_t meta_row_stride, int64_t dense_row_stride, int dtype,
                         int device, uintptr_t stream) {
  perfkern_sparse24_decompress_params_t p{};
  p.values = as_ptr<const void>(values);
  p.meta = as_ptr<const int16_t>(meta);
  p.dense = as_ptr<void>(dense);
  p.rows = rows;
  p.cols = cols;
  p.values_row_stride = values_row_stride;
  p.meta_row_stride = meta_row_stride;
  p.dense_row_stride = dense_row_stride;
  p.dtype = as_dtype(dtype);
  p.device = device;
  perfkern_status_t status;
  {
    py::gil_scoped_release release;
    status = perfkern_sparse24_decompress(&p, as_stream(stream));
  }
  raise_on_error("perfkern_sparse24_decompress", status);
}

void sparse24_gather(uintptr_t dense, uintptr_t meta, uintptr_t values, int64_t rows, int64_t cols,
                     int64_t dense_row_stride, int64_t meta_row_stride, int64_t values_row_stride, int dtype,
                     int device, uintptr_t stream) {
  perfkern_sparse24_gather_params_t p{};
  p.dense = as_ptr<const void>(dense);
  p.meta = as_ptr<const int16_t>(meta);
  p.values = as_ptr<void>(values);
  p.rows = rows;
  p.cols = cols;
  p.dense_row_stride = dense_row_stride;
  p.meta_row_stride = meta_row_stride;
  p.values_row_stride = values_row_stride;
  p.dtype = as_dtype(dtype);
  p.device = device;
  perfkern_status_t status;
  {
    py::gil_scoped_release release;
    status = perfkern_sparse24_gather(&p, as_stream(stream));
  }
  raise_on_error("perfkern_sparse24_gather", status);
}

void sparse24_meta_reorder(uintptr_t src, uintptr_t dst, int64_t rows, int64_t meta_cols, bool to_cutlass, int device,
                           uintptr_t stream) {
  perfkern_sparse24_meta_reorder_params_t p{};
  p.src = as_ptr<const int16_t>(src);
  p.dst = as_ptr<int16_t>(dst);
  p.rows = rows;
  p.meta_cols = meta_cols;
  p.to_cutlass = to_cutlass ? 1 : 0;
  p.device = device;
  perfkern_status_t status;
  {
    py::gil_scoped_release release;
    status = perfkern_sparse24_meta_reorder(&p, as_stream(stream));
  }
  raise_on_error("perfkern_sparse24_meta_reorder", status);
}

int64_t sparse24_mma_meta_size(int64_t rows, int64_t meta_cols) {
  if (rows < 0 || meta_cols < 0 || meta_cols % 2 != 0) {
    throw std::invalid_argument("sparse24_mma_meta_size: expected rows >= 0 and an even meta_cols >= 0, got rows=" +
                                std::to_string(rows) + ", meta_cols=" + std::to_string(meta_cols));
  }
  return perfkern_sparse24_mma_meta_size(rows, meta_cols);
}

void sparse24_meta_to_mma(uintptr_t src, uintptr_t dst, int64_t rows, int64_t meta_cols, int device, uintptr_t stream) {
  perfkern_sparse24_meta_to_mma_params_t p{};
  p.src = as_ptr<const int16_t>(src);
  p.dst = as_ptr<int16_t>(dst);
  p.rows = rows;
  p.meta_cols = meta_cols;
  p.device = device;
  perfkern_status_t status;
  {
    py::gil_scoped_release release;
    status = perfkern_sparse24_meta_to_mma(&p, as_stream(stream));
  }
  raise_on_error("perfkern_sparse24_meta_to_mma", status);
}

void sparse24_mm(uintptr_t x, uintptr_t values, uintptr_t meta_mma, uintptr_t bias, uintptr_t lora_t, uintptr_t lora_b,
                 uintptr_t out, int64_t m, int64_t n, int64_t k, int64_t r, double scale, int64_t x_row_stride,
                 int64_t values_row_stride, int64_t bias_stride, int64_t t_stride0, int64_t t_stride1,
                 int64_t b_stride0, int64_t b_stride1, int64_t out_row_stride, int dtype, int device,
                 uintptr_t stream, int kernel) {
  perfkern_sparse24_mm_params_t p{};
  p.x = as_ptr<const void>(x);
  p.values = as_ptr<const void>(values);
  p.meta_mma = as_ptr<const int16_t>(meta_mma);
  p.bias = as_ptr<const void>(bias);
  p.lora_t = as_ptr<const void>(lora_t);
  p.lora_b = as_ptr<const void>(lora_b);
  p.out = as_ptr<void>(out);
  p.m = m;
  p.n = n;
  p.k = k;
  p.r = r;
  p.scale = static_cast<float>(scale);
  p.x_row_stride = x_row_stride;
  p.values_row_stride = values_row_stride;
  p.bias_stride = bias_stride;
  p.t_stride0 = t_stride0;
  p.t_stride1 = t_stride1;
  p.b_stride0 = b_stride0;
  p.b_stride1 = b_stride1;
  p.out_row_stride = out_row_stride;
  p.dtype = as_dtype(dtype);
  p.device = device;
  p.kernel = static_cast<perfkern_sparse24_mm_kernel_t>(kernel);
  perfkern_status_t status;
  {
    py::gil_scoped_release release;
    status = perfkern_sparse24_mm(&p, as_stream(stream));
  }
  raise_on_error("perfkern_sparse24_mm", status);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "perfkern CUDA core (C API bindings; pointers and streams are ints, 0 = NULL)";

  m.def("version", []() { return std::string(perfkern_version()); }, "Version of the native core.");
  m.def("cuda_archs", []() { return std::string(perfkern_cuda_archs()); },
        "CUDA architectures compiled in, e.g. '80;90a'.");
  m.def("device_count", &device_count, "Number of usable CUDA devices (0 when none; never raises).");
  m.def("device_info", &device_info, py::arg("device"),
        "dict(name, major, minor, multiprocessor_count, total_global_mem) of a device.");

  m.def("sparse24_compress", &sparse24_compress, py::arg("src"), py::arg("values"), py::arg("meta"), py::arg("mask"),
        py::arg("rows"), py::arg("cols"), py::arg("src_row_stride"), py::arg("values_row_stride"),
        py::arg("meta_row_stride"), py::arg("mask_row_stride"), py::arg("dtype"), py::arg("device"),
        py::arg("stream"), "2:4-compress src into values / meta / mask (each may be 0: not written).");
  m.def("sparse24_decompress", &sparse24_decompress, py::arg("values"), py::arg("meta"), py::arg("dense"),
        py::arg("rows"), py::arg("cols"), py::arg("values_row_stride"), py::arg("meta_row_stride"),
        py::arg("dense_row_stride"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
        "Expand values / meta into dense.");
  m.def("sparse24_gather", &sparse24_gather, py::arg("dense"), py::arg("meta"), py::arg("values"), py::arg("rows"),
        py::arg("cols"), py::arg("dense_row_stride"), py::arg("meta_row_stride"), py::arg("values_row_stride"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"), "values = the entries of dense that meta names.");
  m.def("sparse24_meta_reorder", &sparse24_meta_reorder, py::arg("src"), py::arg("dst"), py::arg("rows"),
        py::arg("meta_cols"), py::arg("to_cutlass"), py::arg("device"), py::arg("stream"),
        "Canonical int16 metadata <-> torch's semi-structured CUTLASS layout.");
  m.def("sparse24_mma_meta_size", &sparse24_mma_meta_size, py::arg("rows"), py::arg("meta_cols"),
        "int16 elements of the mma-layout metadata: ceil(rows / 32) * 32 * meta_cols.");
  m.def("sparse24_meta_to_mma", &sparse24_meta_to_mma, py::arg("src"), py::arg("dst"), py::arg("rows"),
        py::arg("meta_cols"), py::arg("device"), py::arg("stream"),
        "Canonical int16 metadata [rows, meta_cols] -> the layout sparse24_mm reads (dst: sparse24_mma_meta_size "
        "int16, 16-byte aligned).");
  m.def("sparse24_mm", &sparse24_mm, py::arg("x"), py::arg("values"), py::arg("meta_mma"), py::arg("bias"),
        py::arg("lora_t"), py::arg("lora_b"), py::arg("out"), py::arg("M"), py::arg("N"), py::arg("K"), py::arg("R"),
        py::arg("scale"), py::arg("x_row_stride"), py::arg("values_row_stride"), py::arg("bias_stride"),
        py::arg("t_stride0"), py::arg("t_stride1"), py::arg("b_stride0"), py::arg("b_stride1"),
        py::arg("out_row_stride"), py::arg("dtype"), py::arg("device"), py::arg("stream"), py::arg("kernel") = 0,
        "out = x . Ws^T + bias + scale * lora_t . lora_b^T on sparse tensor cores (bias, lora_t, lora_b may be 0); "
        "kernel: 0 auto, 1 mma.sp, 2 wgmma.sp.");
}
