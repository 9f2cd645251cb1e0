// Step timelines: spans of the data flow (route, pack, exchange, expert compute, combine,
// aggregate, optimizer, migration) recorded per process as Chrome trace-event JSON, which
// Perfetto (ui.perfetto.dev) and chrome://tracing open. `switchyard trace merge` puts the files
// of several processes on one clock (trace_merge.h).
//
// Off unless started (`--trace FILE` on the commands, or SWITCHYARD_TRACE=FILE for a process
// that embeds the library): a Span then costs one branch. The file is written when the process
// calls flush() or exits. Each file records the process's steady clock against the system clock
// at start, which is what the merge aligns on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sy::trace {

// Starts recording for this process into `path`; `process` names it on the timeline
// ("client 3", "worker 1"). A second start replaces the path and name.
void start(const std::string& path, const std::string& process);
// Starts from SWITCHYARD_TRACE when set and not started yet (`process` as in start).
void start_from_env(const std::string& process);
bool enabled();
// The name shown for this process (a worker learns its id after it started recording).
void set_process_name(const std::string& process);
// Writes every span so far (the whole file, again each call). Throws sy::Error(input) naming
// the file when it cannot be written.
void flush();

// `switchyard trace merge`: the files of several processes (of this machine or others) in one
// timeline. Each file's spans move by the difference of its system clock at its start to the
// earliest file's, so all share the system clock (NTP-close across machines, the same clock on
// one); each process gets its own track. Returns the spans merged; throws sy::Error(input) naming
// a file that is missing or not a Switchyard trace.
size_t merge_files(const std::vector<std::string>& inputs, const std::string& output);

// One span on the calling thread's track, from construction to destruction. `name` must outlive
// the process (a literal); `where` says which layer and stage ("layers.0.stages.1"), may be empty.
class Span {
 public:
  explicit Span(const char* name, std::string where = {});
  ~Span();
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

 private:
  const char* name_;
  std::string where_;
  int64_t start_us_ = -1;  // -1: not recording
};

}  // namespace sy::trace
