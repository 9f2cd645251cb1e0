// Request latencies and per-worker expert rows for the coordinator's metrics (README
// "Observability"): observed here, sent with the next load report.
#include "client_impl.h"

namespace sy {

void TimedExperts::forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) {
  if (layer_ == 0 && stage == 0) im_.request_started();
  inner_->forward(stage, layout, tokens, output);
  if (layer_ == layers_ - 1 && stage == im_.stages - 1) im_.request_finished();
}

void ClusterClient::Impl::request_started() {
  const auto now = Clock::now();
  if (!training) request_start = now;
  else if (!step_start) step_start = now;
}

void ClusterClient::Impl::request_finished() {
  if (training || !request_start) return;
  wire::observe_latency(serve_latency, std::chrono::duration<double>(Clock::now() - *request_start).count());
  request_start.reset();
}

// A training step's latency: from its first forward (the first step) or the previous step's
// optimizer call to this one, i.e. one whole iteration of the trainer.
void ClusterClient::Impl::step_reached() {
  const auto now = Clock::now();
  if (step_start) wire::observe_latency(step_latency, std::chrono::duration<double>(now - *step_start).count());
  step_start = now;
}

void ClusterClient::Impl::take_observations(pb::LoadReportRequest& report) {
  if (serve_latency.buckets_size() > 0) report.mutable_serve_latency()->Swap(&serve_latency);
  if (step_latency.buckets_size() > 0) report.mutable_step_latency()->Swap(&step_latency);
  serve_latency.Clear();
  step_latency.Clear();
  for (const auto& [key, rows] : expert_worker_rows) {
    pb::ExpertWorkerRows* e = report.add_expert_worker_rows();
    e->set_row(std::get<0>(key));
    e->set_expert(std::get<1>(key));
    e->set_worker(std::get<2>(key));
    e->set_rows(rows);
  }
  expert_worker_rows.clear();
}

}  // namespace sy
