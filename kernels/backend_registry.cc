// The one place that knows which backends were compiled in (SWITCHYARD_HAVE_CUDA is set by
// kernels/CMakeLists.txt when kernels/cuda is built).
#include "switchyard/kernels/backend.h"

namespace sy {

#if SWITCHYARD_HAVE_CUDA
Backend* cuda_backend_if_available();  // kernels/cuda/backend.cu: null without a usable device
#endif

const std::vector<Backend*>& backends() {
  static const std::vector<Backend*> list = [] {
    std::vector<Backend*> v;
#if SWITCHYARD_HAVE_CUDA
    if (Backend* cuda = cuda_backend_if_available()) v.push_back(cuda);
#endif
    v.push_back(&cpu_backend());
    return v;
  }();
  return list;
}

std::vector<std::string> compiled_backends() {
  std::vector<std::string> names;
#if SWITCHYARD_HAVE_CUDA
  names.push_back("cuda");
#endif
  names.push_back("cpu");
  return names;
}

}  // namespace sy
