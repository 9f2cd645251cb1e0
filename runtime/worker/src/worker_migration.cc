#include "worker_migration.h"

#include <unistd.h>

#include <cstdlib>

#include "switchyard/core/log.h"

namespace sy {
namespace {
namespace pb = wire::pb;

CopyOutcome refusal(std::string why) {
  CopyOutcome out;
  out.ok = false;
  out.error = std::move(why);
  return out;
}
}  // namespace

void WorkerMigration::handle(const Task& task) {
  if (auto* m = std::get_if<pb::MigrateRequest>(&task)) prepare(*m);
  else notice(std::get<pb::EpochNoticeRequest>(task));
}

void WorkerMigration::prepare(const pb::MigrateRequest& req) {
  if (!*env_.store) return report(req.epoch(), refusal("no model loaded on this worker"));
  Migration m;
  m.epoch = req.epoch();
  m.next = wire::placement_from_pb(req.placement(), req.epoch());
  m.copies.assign(req.copies().begin(), req.copies().end());
  m.at_step = req.at_step_boundary();
  m.buffers = std::async(std::launch::async, allocate_receive_buffers, (*env_.store)->model(), env_.id, m.copies);
  current_ = std::move(m);
  SY_LOG(info, "runtime", env_.label << ": prepared epoch " << req.epoch() << " (" << req.copies_size() << " copies, "
                                     << (req.at_step_boundary() ? "at the next step boundary" : "between requests") << ")");
}

void WorkerMigration::report_when_ready() {
  if (!current_ || current_->at_step || current_->ready_reported) return;
  if (current_->buffers.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return;
  current_->ready_reported = true;
  report(current_->epoch, CopyOutcome{}, /*ready=*/true);
}

void WorkerMigration::follow_clients_epoch(uint64_t routed) {
  if (!current_ || !current_->copied || !current_->at_step) return;
  if (routed >= current_->epoch) commit(current_->epoch);
  else abort(current_->epoch);
}

void WorkerMigration::after_step(uint64_t asked_epoch) {
  if (!current_ || current_->epoch != asked_epoch || !current_->at_step || current_->copied) return;
  copy();  // the state after this step's AdamW, before any rows of the next
}

void WorkerMigration::forget() { current_.reset(); }

void WorkerMigration::copy() {
  Migration& m = *current_;
  m.copied = true;
  if (!m.at_step && env_.training_client_attached())  // would miss the steps until clients switch
    return report(m.epoch, refusal("training steps are running here; a rebalance of a training job must use a step "
                                   "boundary (retry once the coordinator has seen the job's load reports)"));
  // Test hook (tests/runtime/test_rebalance.cc): die as a new holder is about to receive.
  if (std::getenv("SWITCHYARD_TEST_EXIT_IN_COPY"))
    for (const pb::ReplicaCopy& c : m.copies)
      if (c.to_worker() == env_.id) ::_exit(17);
  CopyOutcome out = run_replica_copies(*env_.transport, **env_.store, env_.id, m.epoch, m.copies, env_.timeout,
                                       env_.rank_of, m.buffers.get());
  m.added = out.added;
  env_.held_changed();
  report(m.epoch, out);
}

void WorkerMigration::report(uint64_t epoch, const CopyOutcome& out, bool ready) {
  pb::MigrationReportRequest r;
  r.set_worker_id(env_.id);
  r.set_epoch(epoch);
  r.set_ok(out.ok);
  r.set_error(out.error);
  r.set_ready(ready);
  r.set_received(static_cast<uint32_t>(out.added.size()));
  r.set_bytes_received(out.bytes_received);
  r.set_seconds(out.seconds);
  if (!out.ok) SY_LOG(error, "runtime", env_.label << ": copies of epoch " << epoch << " failed: " << out.error);
  if (Status s = env_.report(r); !s) SY_LOG(warn, "runtime", env_.label << ": reporting on epoch " << epoch << ": " << s.to_string());
}

void WorkerMigration::notice(const pb::EpochNoticeRequest& n) {
  switch (n.action()) {
    case pb::EpochNoticeRequest::COMMIT: return commit(n.epoch());
    case pb::EpochNoticeRequest::ABORT: return abort(n.epoch());
    case pb::EpochNoticeRequest::DROP_OLD: return drop_old(n.epoch());
    case pb::EpochNoticeRequest::COPY:
      if (current_ && current_->epoch == n.epoch() && !current_->copied) copy();
      return;
    default: SY_LOG(warn, "runtime", env_.label << ": epoch notice without an action");
  }
}

void WorkerMigration::commit(uint64_t epoch) {
  if (!current_ || current_->epoch != epoch) return;
  *env_.placement = std::move(current_->next);
  current_.reset();
  env_.committed(epoch);
}

void WorkerMigration::abort(uint64_t epoch) {
  if (!current_ || current_->epoch != epoch) return;
  for (const ExpertKey& k : current_->added) (*env_.store)->remove(k);
  SY_LOG(info, "runtime", env_.label << ": epoch " << epoch << " aborted, discarded " << current_->added.size() << " replicas");
  current_.reset();
  env_.held_changed();
}

void WorkerMigration::drop_old(uint64_t epoch) {
  ExpertStore* store = env_.store->get();
  if (!store || env_.placement->epoch != epoch) return;
  int dropped = 0;
  for (const ExpertKey& k : store->keys())
    if (!env_.placement->holds(env_.id, k)) {
      store->remove(k);
      ++dropped;
    }
  if (dropped) SY_LOG(info, "runtime", env_.label << ": dropped " << dropped << " replicas epoch " << epoch << " no longer places here");
  env_.held_changed();
}

}  // namespace sy
