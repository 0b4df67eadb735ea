// pybind11 module moecomm._C: bindings only. Checks and dispatch live in host_ops.cpp, kernels in
// kernels/cpu/. Every function releases the GIL while the kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "host_ops.h"

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
      .value("bool", moecomm::cpu::ScalarType::kBool);

  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("route_layout", &moecomm::host::route_layout, py::arg("topk_ids"), py::arg("num_experts"),
        py::arg("is_kept"), py::arg("tokens_per_expert"), py::arg("row_of_pair"), py::arg("num_threads"), release);
  m.def("select_kept", &moecomm::host::select_kept, py::arg("topk_ids"), py::arg("num_experts"),
        py::arg("experts_per_bucket"), py::arg("capacity"), py::arg("topk_weights"), py::arg("is_kept"), release);
  m.def("permute", &moecomm::host::permute, py::arg("x"), py::arg("row_of_pair"), py::arg("out"),
        py::arg("num_threads"), release);
  m.def("unpermute", &moecomm::host::unpermute, py::arg("y"), py::arg("row_of_pair"),
        py::arg("topk_weights"), py::arg("out"), py::arg("num_threads"), release);
  m.def("regroup_blocks", &moecomm::host::regroup_blocks, py::arg("rows"), py::arg("block_rows"), py::arg("out"),
        py::arg("num_threads"), release);
  m.def("advise_huge_pages", &moecomm::host::advise_huge_pages, py::arg("out"), release);
  m.def("pack_padded", &moecomm::host::pack_padded, py::arg("rows"), py::arg("counts"), py::arg("out"),
        py::arg("num_threads"), release);
  m.def("unpack_padded", &moecomm::host::unpack_padded, py::arg("buffer"), py::arg("counts"),
        py::arg("out"), py::arg("num_threads"), release);
}
