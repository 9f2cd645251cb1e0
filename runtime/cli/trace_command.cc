// `switchyard trace merge --out M.json A.json B.json ...`: the --trace files of several
// processes in one timeline (core/trace.h: aligned on each process's system clock at its start).
#include "trace_command.h"

#include <iostream>

#include "flags.h"
#include "switchyard/core/trace.h"

namespace sy {

int cli_trace(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "merge") throw UsageError("trace: usage: switchyard trace merge --out M.json FILE...");
  std::string out;
  std::vector<std::string> inputs;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--out" && i + 1 < args.size()) out = args[++i];
    else if (args[i].rfind("--out=", 0) == 0) out = args[i].substr(6);
    else if (args[i].rfind("--", 0) == 0) throw UsageError("trace merge: unknown flag " + args[i]);
    else inputs.push_back(args[i]);
  }
  if (out.empty() || inputs.empty()) throw UsageError("trace merge: give --out M.json and at least one trace file");
  const size_t spans = trace::merge_files(inputs, out);
  std::cout << "merged " << spans << " spans of " << inputs.size() << " processes into " << out << std::endl;
  return 0;
}

}  // namespace sy
