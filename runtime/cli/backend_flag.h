// Compute backends named on the command line: `--backend NAME` (layer, train-toy) and
// `--device cpu|cuda[:N]` (worker).
#pragma once

#include <string>

#include "switchyard/kernels/backend.h"

namespace sy {

// The usable backend `name`; an unknown name, one not compiled into this build, or one without a
// usable device here is a UsageError naming `setting` (a flag, "--backend", or a config key).
Backend& backend_named(const std::string& setting, const std::string& name);

// `--device` VALUE → the backend name. "cuda:N" makes visible device N the process's only CUDA
// device (CUDA_VISIBLE_DEVICES, the N-th entry of the one already set, if any), so it must run
// before anything starts CUDA. A malformed value is a UsageError.
std::string select_device(const std::string& value);

}  // namespace sy
