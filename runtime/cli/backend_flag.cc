#include "backend_flag.h"

#include <algorithm>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "flags.h"

namespace sy {

Backend& backend_named(const std::string& setting, const std::string& name) {
  if (Backend* b = find_backend(name)) return *b;
  const std::vector<std::string> compiled = compiled_backends();
  std::string list;
  for (const std::string& n : compiled) list += (list.empty() ? "" : ", ") + n;
  const std::string what = setting + " " + name;
  if (std::find(compiled.begin(), compiled.end(), name) != compiled.end())
    throw UsageError(what + ": compiled but no " + (name == "cuda" ? std::string("CUDA device") : name) +
                     " usable here (switchyard backends lists what is)");
  if (name == "cuda") throw UsageError(what + ": not compiled in (this build has: " + list + ")");
  throw UsageError(what + ": unknown backend (this build has: " + list + ")");
}

std::string select_device(const std::string& value) {
  const size_t colon = value.find(':');
  const std::string name = value.substr(0, colon);
  if (colon == std::string::npos) return name;
  const std::string index = value.substr(colon + 1);
  if (name != "cuda" || index.empty() || index.find_first_not_of("0123456789") != std::string::npos)
    throw UsageError("--device " + value + ": expected cpu, cuda or cuda:N");
  std::vector<std::string> visible;
  if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES")) {
    std::stringstream list(v);
    for (std::string item; std::getline(list, item, ',');) visible.push_back(item);
  }
  const size_t n = std::stoul(index);
  if (!visible.empty() && n >= visible.size())
    throw UsageError("--device " + value + ": CUDA_VISIBLE_DEVICES=" + std::getenv("CUDA_VISIBLE_DEVICES") +
                     " makes only " + std::to_string(visible.size()) + " device(s) visible");
  ::setenv("CUDA_VISIBLE_DEVICES", visible.empty() ? index.c_str() : visible[n].c_str(), 1);
  return name;
}

}  // namespace sy
