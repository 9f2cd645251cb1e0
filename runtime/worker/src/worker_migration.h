// A worker's side of a rebalance (the coordinator's driver is runtime/coordinator/src/rebalance.cc):
//
//   MigrateRequest (prepare: the new placement, the copy list; receive buffers allocated off the
//   serving thread) → copies, inside the step whose StepOp asks for them (training) or on COPY
//   once every receiver reported ready (serving) → report → COMMIT (the replica reduction follows
//   the new placement) | ABORT (the replicas the copies made go) → DROP_OLD (replicas the new
//   placement no longer puts here go).
//
// Everything runs on the serving thread, which owns the store and the transport (the worker's
// control thread queues the requests for it).
#pragma once

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "replica_copy.h"
#include "switchyard/placement/placement.h"
#include "switchyard/transport/control.h"
#include "switchyard/wire/wire.h"
#include "switchyard/worker/expert_store.h"

namespace sy {

class WorkerMigration {
 public:
  // What the migration works on; the worker owns it all.
  struct Env {
    transport::Transport* transport = nullptr;
    std::unique_ptr<ExpertStore>* store = nullptr;  // empty before a model is loaded
    Placement* placement = nullptr;                 // the replica reduction's; replaced on commit
    std::function<Status(const wire::pb::MigrationReportRequest&)> report;  // to the coordinator (serving thread)
    int id = -1;
    std::string label;
    std::chrono::milliseconds timeout{10000};
    std::function<bool()> training_client_attached;  // a client stepping now (refuse copies between requests)
    std::function<void()> held_changed;              // the store's replicas changed
    std::function<void(uint64_t)> committed;         // the replicas match this epoch's placement now
    std::function<transport::Rank(int)> rank_of;     // a worker id's data-plane id
  };
  using Task = std::variant<wire::pb::MigrateRequest, wire::pb::EpochNoticeRequest>;

  explicit WorkerMigration(Env env) : env_(std::move(env)) {}

  void handle(const Task& task);  // a request from the coordinator
  // Between requests: report the receive buffers ready once they are allocated.
  void report_when_ready();
  // Inside a step, before the replica reduction: a rebalance whose copies ran at an earlier step
  // boundary is in force once the step's clients route with its epoch (`routed`), aborted while
  // they still route with an older one.
  void follow_clients_epoch(uint64_t routed);
  // After the step's AdamW: run the copies when a StepOp of the step asked for `asked_epoch`.
  void after_step(uint64_t asked_epoch);
  void forget();  // a new model was loaded

 private:
  struct Migration {
    uint64_t epoch = 0;
    Placement next;
    std::vector<wire::pb::ReplicaCopy> copies;
    bool at_step = false;             // copies run inside the step that asks for them
    bool copied = false;
    std::vector<ExpertKey> added;     // replicas the copies made here (discarded on abort)
    std::future<ReceiveBuffers> buffers;
    bool ready_reported = false;
  };

  void prepare(const wire::pb::MigrateRequest& req);
  void notice(const wire::pb::EpochNoticeRequest& n);
  void copy();
  void report(uint64_t epoch, const CopyOutcome& out, bool ready = false);
  void commit(uint64_t epoch);
  void abort(uint64_t epoch);
  void drop_old(uint64_t epoch);

  Env env_;
  std::optional<Migration> current_;
};

}  // namespace sy
