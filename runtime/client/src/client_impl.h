// The client's private state and its round trips with the workers (exchange.cc), shared by the
// public calls (cluster_client.cc) and the routed experts of each layer (remote_experts.cc).
//
// A round trip sends one request per worker and waits for every reply. A worker that fails on
// the data plane, or that the coordinator declares dead, is *lost*: its link is closed, the
// coordinator is told (it fences the worker, so nobody uses its replicas again), and the call is
// marked lost for the caller to fail over. A timeout or a malformed reply fails the round trip.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "switchyard/client/cluster_client.h"
#include "switchyard/scheduler/dispatch_plan.h"
#include "switchyard/transport/control.h"
#include "switchyard/transport/transport.h"
#include "switchyard/wire/wire.h"

namespace sy {

namespace pb = wire::pb;
using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

struct WorkerLink {
  std::string label;   // "worker 2 (host:pid 123, 127.0.0.1:4000)"
  transport::Rank peer = 0;  // the process's data-plane id (a replacement's differs from its slot)
  // Rows go to it under placement epochs from this one on: a replacement holds nothing of the
  // placement it joined under; the epoch that gives it replicas is newer.
  uint64_t routable_from_epoch = 0;
  uint64_t rows_sent = 0;
  std::string broken;  // why the link was closed; empty while healthy
};

// One request to one worker and its reply. Several calls to one worker may be in flight at
// once: the worker answers them in order, and their replies are matched in that order.
struct Call {
  int worker = 0;
  pb::WorkerRequest request;
  const void* payload = nullptr;
  size_t payload_bytes = 0;
  // The reply payload lands in `reply_into` (room for exactly `reply_floats` values: the
  // caller's output rows, no copy) when set, else in `reply`.
  float* reply_into = nullptr;
  size_t reply_floats = 0;
  std::vector<float> staged_payload;  // the payload, when it had to be packed for this call
  std::vector<float> reply;
  Status error;              // the worker answered with an error
  bool lost = false;         // the worker was lost before it answered
  // in flight
  wire::OutgoingMessage out;
  std::unique_ptr<char[]> header;  // kMaxHeaderBytes, not zeroed
  transport::RequestId header_request{}, payload_request{};
  enum class Stage { header, payload, done } stage = Stage::header;
};

// What a lost worker computed in this step's backward, kept until the optimizer step so its
// gradient contribution can be recomputed on a surviving replica (remote_experts.cc).
struct BackwardRecord {
  int layer = 0, stage = 0;
  WorkerDispatch dispatch;
  std::vector<float> inputs, grads;  // the rows it was sent, in its packing order
};

struct ClusterClient::Impl {
  std::string coordinator_endpoint, name;
  std::unique_ptr<control::ControlClient> coordinator;
  std::unique_ptr<transport::Transport> transport;  // this process's one data-plane endpoint
  std::map<int, WorkerLink> links;  // by worker id (slot)
  uint64_t routing_epoch = 0;       // the placement epoch the client routes with
  uint64_t membership_version = 0;  // the coordinator's, when the links were last matched to it
  int workers_expected = 0;
  std::unique_ptr<Config> config;
  uint64_t next_request = 1;
  Millis request_timeout{10000}, startup_timeout{120000}, liveness_check{500};
  std::vector<std::unique_ptr<ExpertCompute>> layer_experts;
  double worker_compute_seconds = 0;  // Σ over round trips of the slowest worker's compute
  int client_id = 0;
  // Load since the last report (pb::LoadCounts shape: [rows × experts], [rows × workers]).
  pb::LoadCounts counts;
  int stages = 1;
  Clock::time_point last_report;
  std::vector<BackwardRecord> journal;  // this step's backward parts, while failover is possible
  uint64_t workers_lost = 0;
  bool training = true;  // mirrors ClusterClient::set_training
  std::map<int, std::string> lost_unreported;  // lost workers the coordinator has not been told about yet
  // Observability (timed_experts.cc), since the last load report: request latencies and the rows
  // sent per (row, expert, worker).
  pb::LatencyHistogram serve_latency, step_latency;
  std::map<std::tuple<int, int, int>, int64_t> expert_worker_rows;
  std::optional<Clock::time_point> request_start;  // serving: the forward of layer 0, stage 0
  std::optional<Clock::time_point> step_start;     // training: the step's first forward, or the last step()
  void request_started();
  void request_finished();
  void step_reached();  // in step(): one training step's latency
  void take_observations(pb::LoadReportRequest& report);

  // cluster.checkpoint_* (from the coordinator); the last step number stepped.
  struct {
    int every_steps = 0;
    std::string dir;
    int keep = 2;
  } checkpoints;
  uint64_t last_step = 0;

  Millis coordinator_timeout{15000};
  std::chrono::microseconds reply_spin{0};  // cluster.client_spin_us: spin after a reply, then sleep on events
  int64_t chunk_rows = 0;                  // cluster.chunk_rows: rows per request (0: one per worker)
  ClusterClient::CopyCounts copies;
  std::optional<Clock::time_point> coordinator_away_since;  // load reports have failed since

  // A call to the coordinator; a broken channel (a restarted coordinator) is reconnected first.
  template <class Request, class Reply>
  Result<Reply> coordinator_call(const Request& request) {
    if (coordinator->broken()) reconnect_coordinator();
    auto r = coordinator->call<Request, Reply>(request);
    if (r || !coordinator->broken()) return r;
    if (!reconnect_coordinator()) return r;
    return coordinator->call<Request, Reply>(request);
  }
  bool reconnect_coordinator();
  // A failed call the job can go on without (a load report): fine while the coordinator has been
  // away for less than cluster.coordinator_timeout_ms; then a transport error saying so.
  void coordinator_away(const Status& why);

  Status usable(int w) const;
  transport::Rank peer(int w) const { return links.at(w).peer; }
  // Attaches to worker `w` (a replacement: replacing the link to its lost predecessor).
  void attach(const pb::WorkerInfo& w, uint64_t coordinator_epoch);
  // Attaches to every live worker process that has no link yet (a replacement, say).
  void sync_links(const pb::ClusterInfoReply& info);
  std::string label(int w) const;
  std::set<int> live_workers() const;

  // Sends every call and waits until each answered (c.reply, or c.error for an error reply) or
  // was lost (c.lost). Fails, with every worker of `calls` disconnected, on a timeout or a
  // malformed reply. `waited_seconds` grows by the time not spent in the workers' compute.
  Status exchange(std::vector<Call>& calls, const std::string& what, double* waited_seconds = nullptr);
  // Public calls: any loss or error reply throws at this edge (sy::Error by wire::throw_error).
  void call(std::vector<Call>& calls, const std::string& what, double* waited_seconds = nullptr);
  // Closes the link to `w`, releases `c`'s requests, and tells the coordinator.
  void lose(Call& c, const std::string& reason);
  void lose_worker(int w, const std::string& reason);
  void report_lost_workers();  // those the coordinator could not be told about
  // Workers among `ids` the coordinator declares dead or replaced (with why); empty when it does
  // not answer.
  std::map<int, std::string> dead_among(const std::set<int>& ids);

 private:
  Status post_all(std::vector<Call>& calls, const std::string& what);
  Status await_replies(std::vector<Call>& calls, const std::string& what, Clock::time_point start,
                       std::map<int, double>& compute_of);
  Status advance(Call& c, const std::string& what, double& computed);
  void release(Call& c);
  void abandon(std::vector<Call>& calls, const std::string& reason);
};

// Times requests around a layer's routed experts (timed_experts.cc): a serving request runs from
// the forward of layer 0, stage 0 to the end of the forward of the last layer's last stage.
class TimedExperts final : public ExpertCompute {
 public:
  TimedExperts(std::unique_ptr<ExpertCompute> inner, ClusterClient::Impl& im, int layer, int layers)
      : inner_(std::move(inner)), im_(im), layer_(layer), layers_(layers) {}
  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) override;
  void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output, Tensor* grad_input) override {
    inner_->backward(stage, layout, grad_output, grad_input);
  }
  bool waits_for_rows() const override { return inner_->waits_for_rows(); }

 private:
  std::unique_ptr<ExpertCompute> inner_;
  ClusterClient::Impl& im_;
  int layer_, layers_;
};

// The routed experts of one layer on the workers, with failover (remote_experts.cc).
class RemoteExperts final : public ExpertCompute {
 public:
  RemoteExperts(ClusterClient& client, int layer);
  ~RemoteExperts() override;
  void forward(int stage, const cpu::DispatchLayout& layout, const Tensor& tokens, Tensor& output) override;
  // The workers always send the input gradient back: a null grad_input only drops it here.
  void backward(int stage, const cpu::DispatchLayout& layout, const Tensor& grad_output, Tensor* grad_input) override;
  bool waits_for_rows() const override { return true; }  // the workers compute the rows
  // Before the optimizer step: the backward work of this step's lost workers, recomputed on
  // surviving replicas (their gradients would be missing from the reduction otherwise).
  static void replay_lost_backward(ClusterClient& client);

 private:
  class Flow;
  struct Handle;
  bool keeps_rows() const;  // training with a replicated expert: keep rows for failover
  ClusterClient& client_;
  int layer_;
  std::map<int, std::unique_ptr<Handle>> handles_;  // per stage: the forward's parts, for backward
};

}  // namespace sy
