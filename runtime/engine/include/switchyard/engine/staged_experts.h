// Host experts for an engine on a device: an ExpertCompute whose tensors are host memory (a
// cluster's RemoteExperts: rows go over UCX from host buffers) put behind a LayerEngine whose
// tensors are a device backend's. Forward downloads the stage's tokens, runs the host experts and
// uploads their output; backward does the same with the output gradients and the input
// gradients. The outputs handed to the engine are views of device buffers this object owns,
// valid until its next forward/backward of the stage (the LocalExperts contract).
#pragma once

#include <optional>
#include <vector>

#include "switchyard/engine/layer_engine.h"
#include "switchyard/kernels/buffer.h"

namespace sy {

class StagedExperts final : public ExpertCompute {
 public:
  // `host` must outlive this object; `device` is the engine's backend.
  StagedExperts(ExpertCompute& host, Backend& device) : host_(host), device_(device) {}
  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) override;
  void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output, Tensor* grad_input) override;
  bool waits_for_rows() const override { return host_.waits_for_rows(); }

 private:
  Tensor download(const Tensor& device_tensor) const;
  // `host` uploaded into owners[stage]; returns the device view.
  Tensor upload(const Tensor& host, std::vector<FloatBuffer>& owners, int stage) const;

  ExpertCompute& host_;
  Backend& device_;
  std::vector<FloatBuffer> outputs_, grad_inputs_;  // [stage]
};

// `host` as the experts of an engine on `engine_backend`: itself on a host backend, else a
// StagedExperts over it, kept in `holder`.
ExpertCompute& experts_on(ExpertCompute& host, Backend& engine_backend, std::optional<StagedExperts>& holder);

}  // namespace sy
