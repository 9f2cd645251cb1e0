// Command-line flag parsing shared by the CLI's subcommands.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace sy {

constexpr int kUsageExit = 2;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --flag value pairs and bare --switches, validated against the command's flag list.
class Flags {
 public:
  Flags(const std::vector<std::string>& args, const std::string& command, const std::set<std::string>& allowed,
        const std::set<std::string>& switches = {})
      : command_(command) {
    for (size_t i = 0; i < args.size(); ++i) {
      const std::string& a = args[i];
      if (a.rfind("--", 0) != 0) throw UsageError(command + ": unexpected argument '" + a + "'");
      std::string key = a.substr(2), value;
      const size_t eq = key.find('=');
      if (eq != std::string::npos) {
        value = key.substr(eq + 1);
        key = key.substr(0, eq);
      } else if (switches.count(key)) {
        value = "true";
      } else {
        if (i + 1 >= args.size()) throw UsageError(command + ": --" + key + " needs a value");
        value = args[++i];
      }
      if (!allowed.count(key) && !switches.count(key))
        throw UsageError(command + ": unknown flag --" + key);
      values_[key] = value;
    }
  }
  bool has(const std::string& k) const { return values_.count(k) != 0; }
  std::string get(const std::string& k) const {
    auto it = values_.find(k);
    if (it == values_.end()) throw UsageError(command_ + ": --" + k + " is required");
    return it->second;
  }
  std::string get_or(const std::string& k, const std::string& def) const { return has(k) ? get(k) : def; }
  int64_t get_int(const std::string& k, int64_t def) const {
    if (!has(k)) return def;
    const std::string v = get(k);
    size_t pos = 0;
    int64_t out = 0;
    try {
      out = std::stoll(v, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos != v.size() || v.empty()) throw UsageError(command_ + ": --" + k + " expects an integer, got '" + v + "'");
    return out;
  }
  double get_double(const std::string& k, double def) const {
    if (!has(k)) return def;
    const std::string v = get(k);
    size_t pos = 0;
    double out = 0;
    try {
      out = std::stod(v, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos != v.size() || v.empty()) throw UsageError(command_ + ": --" + k + " expects a number, got '" + v + "'");
    return out;
  }

 private:
  std::string command_;
  std::map<std::string, std::string> values_;
};

}  // namespace sy
