// pybind11 module moecomm._C: bindings only. Checks and dispatch live in host_ops.cpp and host_quant.cpp,
// kernels in kernels/cpu/. Every function releases the GIL while the kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "host_ops.h"
#include "host_quant.h"
#include "shm_host.h"

namespace py = pybind11;
using moecomm::host::TensorArg;

PYBIND11_MODULE(_C, m) {
  m.doc() = "moecomm native core (CPU kernels over raw pointers; no libtorch)";

  py::class_<TensorArg>(m, "TensorArg")
      .def(py::init([](std::string name, uintptr_t data, std::vector<int64_t> shape,
                       std::vector<int64_t> strides, int dtype, int64_t nbytes) {
             return TensorArg{std::move(name), data, std::move(shape), std::move(strides), dtype, nbytes};
           }),
           py::arg("name"), py::arg("data"), py::arg("shape"), py::arg("strides"), py::arg("dtype"),
           py::arg("nbytes"))
      .def_readonly("name", &TensorArg::name)
      .def_readonly("shape", &TensorArg::shape)
      .def_readonly("strides", &TensorArg::strides)
      .def_readonly("dtype", &TensorArg::dtype)
      .def_readonly("nbytes", &TensorArg::nbytes);

  py::enum_<moecomm::cpu::ScalarType>(m, "ScalarType")
      .value("float32", moecomm::cpu::ScalarType::kFloat32)
      .value("float16", moecomm::cpu::ScalarType::kFloat16)
      .value("bfloat16", moecomm::cpu::ScalarType::kBFloat16)
      .value("int32", moecomm::cpu::ScalarType::kInt32)
      .value("int64", moecomm::cpu::ScalarType::kInt64)
      .value("bool", moecomm::cpu::ScalarType::kBool)
      .value("int8", moecomm::cpu::ScalarType::kInt8)
      .value("float8_e4m3fn", moecomm::cpu::ScalarType::kFloat8E4M3FN);

  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("route_layout", &moecomm::host::route_layout, py::arg("topk_ids"), py::arg("num_experts"),
        py::arg("is_kept"), py::arg("tokens_per_expert"), py::arg("row_of_pair"), py::arg("num_threads"),
        release);
  m.def("select_kept", &moecomm::host::select_kept, py::arg("topk_ids"), py::arg("num_experts"),
        py::arg("experts_per_bucket"), py::arg("capacity"), py::arg("topk_weights"), py::arg("is_kept"),
        release);
  m.def("permute", &moecomm::host::permute, py::arg("x"), py::arg("row_of_pair"), py::arg("buffers"),
        py::arg("table"), py::arg("row_stride"), py::arg("num_threads"), release);
  m.def("unpermute", &moecomm::host::unpermute, py::arg("y"), py::arg("row_of_pair"), py::arg("topk_weights"),
        py::arg("out"), py::arg("token_begin"), py::arg("token_end"), py::arg("num_threads"), release);
  m.def("regroup_blocks", &moecomm::host::regroup_blocks, py::arg("rows"), py::arg("block_rows"),
        py::arg("out"), py::arg("num_threads"), release);
  m.def("advise_huge_pages", &moecomm::host::advise_huge_pages, py::arg("out"), release);
  m.def("pack_padded", &moecomm::host::pack_padded, py::arg("rows"), py::arg("counts"), py::arg("out"),
        py::arg("num_threads"), release);
  m.def("unpack_padded", &moecomm::host::unpack_padded, py::arg("buffer"), py::arg("counts"), py::arg("out"),
        py::arg("num_threads"), release);

  // Shared-memory transport (kernels/cpu/shm/ through the C ABI of moecomm/shm.h; checks in shm_host.cpp).
  using moecomm::host::ShmGroupHost;
  using moecomm::host::ShmRegionBuffer;
  py::register_exception<moecomm::host::ShmError>(m, "ShmError", PyExc_RuntimeError);
  m.def("shm_random_name", &moecomm::host::shm_random_name);
  m.def("shm_random_nonce", &moecomm::host::shm_random_nonce);
  py::class_<ShmRegionBuffer>(m, "ShmRegionBuffer", py::buffer_protocol())
      .def_property_readonly("nbytes", &ShmRegionBuffer::nbytes)
      .def_buffer([](ShmRegionBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.nbytes())}, {py::ssize_t{1}});
      });
  py::class_<ShmGroupHost>(m, "ShmGroup")
      .def(py::init<int, int, uint64_t, const std::vector<std::string>&, double>(), py::arg("rank"),
           py::arg("world_size"), py::arg("nonce"), py::arg("names"), py::arg("timeout_s"), release)
      .def_property_readonly("rank", &ShmGroupHost::rank)
      .def_property_readonly("world_size", &ShmGroupHost::world_size)
      .def("close", &ShmGroupHost::close, release)
      .def("own_segment_mode", &ShmGroupHost::own_segment_mode)
      .def("barrier", &ShmGroupHost::barrier, py::arg("timeout_s"), release)
      .def("all_gather", &ShmGroupHost::all_gather, py::arg("tensor"), py::arg("out"), py::arg("num_threads"),
           py::arg("timeout_s"), release)
      .def("all_to_all", &ShmGroupHost::all_to_all, py::arg("tensor"), py::arg("input_splits"),
           py::arg("out"), py::arg("output_splits"), py::arg("num_threads"), py::arg("timeout_s"), release)
      .def("reduce_scatter", &ShmGroupHost::reduce_scatter, py::arg("tensor"), py::arg("out"),
           py::arg("num_threads"), py::arg("timeout_s"), release)
      .def("ensure_region", &ShmGroupHost::ensure_region, py::arg("region"), py::arg("nbytes"), release)
      .def("sync", &ShmGroupHost::sync, py::arg("timeout_s"), release)
      .def("region", &ShmGroupHost::region, py::arg("rank"), py::arg("region"), release);
  m.def("quantize_rows", &moecomm::host::quantize_rows, py::arg("x"), py::arg("code_dtype"),
        py::arg("q_buffers"), py::arg("q_table"), py::arg("q_row_stride"), py::arg("scale_buffers"),
        py::arg("scale_table"), py::arg("scale_row_stride"), py::arg("row_of_pair"), py::arg("num_threads"),
        release);
  m.def("dequantize_rows", &moecomm::host::dequantize_rows, py::arg("q"), py::arg("scales"), py::arg("out"),
        py::arg("row_of_pair"), py::arg("num_threads"), release);
}
